"""Nipype interfaces for ANTs registration and resampling between GRE, T1w and template spaces.

Thin wrappers around :mod:`qsmprep.anat` (registration driver, transform I/O, T1w brain
extraction, coregistration) for :mod:`qsmprep.workflows.coreg`, :mod:`qsmprep.workflows.anat`
and :mod:`qsmprep.workflows.roi`.  Transform conventions and references:
:mod:`qsmprep.anat.registration`.
"""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec, isdefined, traits,
)

from qsmprep.anat import (
    INTERPOLATIONS, LINEAR_PRESETS, SYN_PRESETS, align_to_gre, apply_transforms, brain_extract_t1w, register_to_gre,
    coregister_gre_to_t1w,
    linear_schedule, register,
)


def _levels(stages, preset):
    """Sidecar form of :func:`qsmprep.anat.linear_schedule`: ``{stage: [[shrink, sigma, iterations], ...]}``."""
    return {stage: [list(level) for level in levels] for stage, levels in linear_schedule(stages, preset)}


class _BrainExtractInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="T1w image")
    method = traits.Enum("threshold", "template", "none", usedefault=True, desc="brain extraction method")
    template = File(exists=True, desc="template T1w (method 'template')")
    template_mask = File(exists=True, desc="template brain mask (method 'template')")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _BrainExtractOutputSpec(TraitedSpec):
    brain = File(exists=True, desc="bias-corrected, skull-stripped T1w")
    mask = File(exists=True, desc="T1w brain mask")
    corrected = File(exists=True, desc="bias-corrected T1w (with skull)")
    info = traits.Dict(desc="sidecar metadata")


class T1wBrainExtraction(SimpleInterface):
    """Skull-strip the T1w without network access (:func:`qsmprep.anat.brain_extract_t1w`)."""

    input_spec = _BrainExtractInputSpec
    output_spec = _BrainExtractOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        out = brain_extract_t1w(
            inp.t1w, runtime.cwd, method=inp.method,
            template=inp.template if isdefined(inp.template) else None,
            template_mask=inp.template_mask if isdefined(inp.template_mask) else None,
            num_threads=inp.num_threads,
        )
        self._results.update(out)
        self._results["info"] = {"BrainExtraction": inp.method,
                                 "BiasCorrection": "N4 (ANTs)" if inp.method != "none" else "none"}
        return runtime


class _CoregInputSpec(BaseInterfaceInputSpec):
    fixed = File(exists=True, mandatory=True, desc="T1w (bias-corrected; with or without skull)")
    fixed_mask = File(exists=True, desc="T1w brain mask (dilated by dilate_mm and used as metric mask)")
    moving = File(exists=True, mandatory=True, desc="GRE echo-averaged magnitude")
    moving_mask = File(exists=True, desc="GRE brain mask (metric mask)")
    stages = traits.List(traits.Enum("rigid", "affine"), value=["rigid", "affine"], usedefault=True,
                         desc="linear stages, in order")
    preset = traits.Enum("gre2t1w", "precise", "sloppy", usedefault=True,
                         desc="registration settings (LINEAR_PRESETS; gre2t1w as coregister_gre_to_t1w)")
    dilate_mm = traits.Float(4.0, usedefault=True, desc="dilation of the T1w brain mask for the metric")
    random_seed = traits.Int(42, usedefault=True, desc="seed of the metric sampling")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _CoregOutputSpec(TraitedSpec):
    xfm = File(exists=True, desc="from-GRE_to-T1w affine (.mat; resamples GRE images into T1w space)")
    inv_xfm = File(exists=True, desc="from-T1w_to-GRE affine (.mat)")
    warped = File(exists=True, desc="GRE magnitude resampled into T1w space")
    info = traits.Dict(desc="sidecar metadata")


class CoregGREtoT1w(SimpleInterface):
    """Affine registration of the GRE echo-averaged magnitude to the T1w (:func:`qsmprep.anat.coregister_gre_to_t1w`).

    Rigid then affine, Mattes mutual information, the ``gre2t1w`` 3-level pyramid by default
    (``precise``: antsRegistrationSyN[a]'s 4 levels), metric restricted to the dilated T1w brain
    mask so the skull and neck of the T1w do not drive the fit.
    """

    input_spec = _CoregInputSpec
    output_spec = _CoregOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        out = coregister_gre_to_t1w(
            inp.fixed, inp.moving, runtime.cwd, stages=tuple(inp.stages), preset=inp.preset,
            fixed_mask=inp.fixed_mask if isdefined(inp.fixed_mask) else None,
            moving_mask=inp.moving_mask if isdefined(inp.moving_mask) else None,
            dilate_mm=inp.dilate_mm, random_seed=inp.random_seed, num_threads=inp.num_threads,
        )
        self._results.update(out)
        self._results["info"] = {
            "Registration": "antsRegistration (antspyx): " + " + ".join(inp.stages)
            + ", Mattes mutual information, multi-resolution",
            "RegistrationPreset": inp.preset,
            "RegistrationParameters": dict(LINEAR_PRESETS[inp.preset]),
            "RegistrationLevels": _levels(tuple(inp.stages), inp.preset),
        }
        return runtime


class _RegisterTemplateInputSpec(BaseInterfaceInputSpec):
    t1w_brain = File(exists=True, mandatory=True, desc="skull-stripped T1w")
    t1w_mask = File(exists=True, desc="T1w brain mask (moving metric mask)")
    template = File(exists=True, mandatory=True, desc="skull-stripped template T1w")
    template_mask = File(exists=True, desc="template brain mask (fixed metric mask)")
    sloppy = traits.Bool(False, usedefault=True, desc="faster, less accurate settings")
    random_seed = traits.Int(42, usedefault=True, desc="seed of the metric sampling")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _RegisterTemplateOutputSpec(TraitedSpec):
    xfm = File(exists=True, desc="from-T1w_to-<template> composite (.h5; resamples T1w images into the template)")
    inv_xfm = File(exists=True, desc="from-<template>_to-T1w composite (.h5)")
    warped = File(exists=True, desc="T1w brain in template space")
    info = traits.Dict(desc="sidecar metadata")


class RegisterToTemplate(SimpleInterface):
    """Rigid + affine + SyN registration of the T1w brain to a template (:func:`qsmprep.anat.register`)."""

    input_spec = _RegisterTemplateInputSpec
    output_spec = _RegisterTemplateOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        preset = "sloppy" if inp.sloppy else "precise"
        reg = register(
            inp.template, inp.t1w_brain, os.path.join(runtime.cwd, "t1w2tpl_"),
            stages=("rigid", "affine", "syn"), preset=preset, syn_preset=preset,
            fixed_mask=inp.template_mask if isdefined(inp.template_mask) else None,
            moving_mask=inp.t1w_mask if isdefined(inp.t1w_mask) else None,
            random_seed=inp.random_seed, num_threads=inp.num_threads, composite=True,
        )
        self._results.update({"xfm": reg["forward"][0], "inv_xfm": reg["inverse"][0][0], "warped": reg["warped"]})
        self._results["info"] = {
            "Registration": "antsRegistration (antspyx): rigid + affine (mutual information) + SyN "
            + ("(mutual information, no full-resolution level; --sloppy)" if inp.sloppy
               else "(cross-correlation radius 2)"),
            "RegistrationPreset": preset,
            "RegistrationParameters": {"linear": dict(LINEAR_PRESETS[preset]), "syn": dict(SYN_PRESETS[preset])},
            "RegistrationLevels": _levels(("rigid", "affine", "syn"), preset),
        }
        return runtime


class _ApplyInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to resample")
    reference = File(exists=True, mandatory=True, desc="image defining the output grid")
    transforms = InputMultiObject(traits.Str, desc="transform files, antsApplyTransforms order (none = identity)")
    invert = InputMultiObject(traits.Bool, desc="invert flag per transform (affines only)")
    interpolation = traits.Enum(*INTERPOLATIONS, usedefault=True, desc="interpolation")
    dtype = traits.Enum("float32", "int16", "uint8", usedefault=True, desc="output data type")
    out_name = traits.Str("resampled.nii.gz", usedefault=True, desc="output file name")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _ApplyOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="resampled image")


class ApplyTransforms(SimpleInterface):
    """Resample an image through a list of ANTs transforms (:func:`qsmprep.anat.apply_transforms`)."""

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        transforms = list(inp.transforms) if isdefined(inp.transforms) else []
        invert = list(inp.invert) if isdefined(inp.invert) else [False] * len(transforms)
        if len(invert) != len(transforms):
            raise ValueError(f"invert has {len(invert)} flags for {len(transforms)} transforms")
        out = os.path.join(runtime.cwd, inp.out_name)
        apply_transforms(inp.in_file, inp.reference, list(zip(transforms, invert)), out,
                         interpolation=inp.interpolation, dtype=inp.dtype, num_threads=inp.num_threads)
        self._results["out_file"] = out
        return runtime


class _AlignToGREInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="map of another acquisition (an R2 map)")
    reference = File(exists=True, mandatory=True, desc="GRE echo-averaged magnitude")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _AlignToGREOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the map in the GRE grid")
    source = traits.Str(desc="the input file and the registration done, for the sidecar")


class AlignToGRE(SimpleInterface):
    """A map of another scan into the GRE grid (:func:`qsmprep.anat.align_to_gre`)."""

    input_spec = _AlignToGREInputSpec
    output_spec = _AlignToGREOutputSpec

    def _run_interface(self, runtime):
        out, info = align_to_gre(self.inputs.in_file, self.inputs.reference, runtime.cwd,
                                 num_threads=self.inputs.num_threads)
        self._results["out_file"] = out
        self._results["source"] = f"{self.inputs.in_file}; {info['Registration']}"
        return runtime


class _RegisterToGREOutputSpec(TraitedSpec):
    transforms = traits.List(File(exists=True), desc="antsApplyTransforms list to the GRE grid (empty on it)")
    info = traits.Dict(desc="the registration done, for the sidecar")


class RegisterToGRE(SimpleInterface):
    """Rigid transform of another image of the session (a FLAIR) to the GRE grid
    (:func:`qsmprep.anat.register_to_gre`)."""

    input_spec = _AlignToGREInputSpec
    output_spec = _RegisterToGREOutputSpec

    def _run_interface(self, runtime):
        transforms, info = register_to_gre(self.inputs.in_file, self.inputs.reference, runtime.cwd,
                                           num_threads=self.inputs.num_threads)
        self._results["transforms"] = transforms
        self._results["info"] = dict(info, RegisteredImage=os.path.basename(self.inputs.in_file))
        return runtime

"""T1w → template (TemplateFlow) normalisation and χ in template space."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface, Merge
from nipype.pipeline import engine as pe

from qsmprep.interfaces.derivatives import DerivativesSink
from qsmprep.interfaces.registration import ApplyTransforms, RegisterToTemplate

ANAT_INPUTS = ["t1w_brain", "t1w_mask", "chi", "xfm_gre2t1w", "chi_info"]
ANAT_OUTPUTS = ["xfm_t1w2tpl", "xfm_tpl2t1w", "t1w_tpl", "chi_tpl", "template", "info"]


def init_template_wf(*, template, template_files, sloppy=False, omp_nthreads=1, output_dir=None, entities=None,
                     sources=None, common_meta=None, name=None):
    """Register the T1w brain to a template (ANTs SyN) and resample χ into template space.

    Parameters
    ----------
    template : str
        TemplateFlow name (``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``), used in the names
        ``from-T1w_to-<template>`` and ``space-<template>``.
    template_files : dict
        ``{"brain": ..., "mask": ..., "t1w": ...}`` from :func:`qsmprep.templates.get_template`
        (resolved when the workflow is built, so a missing template stops the run before it
        starts, with the prefetch instructions).
    sloppy : bool
        antsRegistrationSyNQuick-like settings (mutual-information SyN without the
        full-resolution level, coarser linear stages): several times faster, less accurate.
    omp_nthreads : int
        ITK threads.
    output_dir, entities, sources, common_meta : optional
        Write ``space-<template>_Chimap`` and the ``from-T1w_to-<template>`` /
        ``from-<template>_to-T1w`` composite transforms.

    Inputs
    ------
    t1w_brain, t1w_mask : from :func:`qsmprep.workflows.coreg.init_coreg_wf`;
    chi : GRE-space χ; xfm_gre2t1w : the coregistration; chi_info : χ sidecar dictionary.

    Outputs
    -------
    xfm_t1w2tpl (resamples T1w images into the template), xfm_tpl2t1w (template images into
    T1w, used for atlases), t1w_tpl, chi_tpl, template (reference grid), info.
    """
    brain = template_files.get("brain") or template_files["t1w"]
    workflow = pe.Workflow(name=name or f"template_{template}_wf")
    inputnode = pe.Node(IdentityInterface(fields=ANAT_INPUTS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=ANAT_OUTPUTS), name="outputnode")
    outputnode.inputs.template = brain

    reg = pe.Node(
        RegisterToTemplate(template=brain, template_mask=template_files["mask"], sloppy=sloppy,
                           num_threads=omp_nthreads),
        name="t1w_to_template", n_procs=omp_nthreads, mem_gb=3.0,
    )
    # χ: template point -> T1w (composite) -> GRE (coregistration); ANTs lists apply last first
    xfms = pe.Node(Merge(2), name="chi_transforms", run_without_submitting=True)
    chi_tpl = pe.Node(ApplyTransforms(reference=brain, interpolation="linear", out_name="chi_tpl.nii.gz",
                                      num_threads=omp_nthreads), name="chi_to_template", mem_gb=2.0)
    workflow.connect([
        (inputnode, reg, [("t1w_brain", "t1w_brain"), ("t1w_mask", "t1w_mask")]),
        (inputnode, xfms, [("xfm_gre2t1w", "in1")]),
        (reg, xfms, [("xfm", "in2")]),
        (inputnode, chi_tpl, [("chi", "in_file")]),
        (xfms, chi_tpl, [("out", "transforms")]),
        (reg, outputnode, [("xfm", "xfm_t1w2tpl"), ("inv_xfm", "xfm_tpl2t1w"), ("warped", "t1w_tpl"),
                           ("info", "info")]),
        (chi_tpl, outputnode, [("out_file", "chi_tpl")]),
    ])
    if output_dir is not None:
        if entities is None:
            raise ValueError("entities are needed to name the derivatives")
        meta = dict(common_meta or {})
        srcs = list(sources or [])
        ds_chi = pe.Node(DerivativesSink(out_dir=str(output_dir), entities=dict(entities), suffix="Chimap",
                                         space=template, units="ppm",
                                         meta=dict(meta, SkullStripped=True, Interpolation="linear"),
                                         sources=srcs), name="ds_chi_tpl", run_without_submitting=True)
        meta_merge = pe.Node(Merge(2), name="chi_tpl_meta", run_without_submitting=True)
        workflow.connect([
            (inputnode, meta_merge, [("chi_info", "in1")]),
            (reg, meta_merge, [("info", "in2")]),
            (chi_tpl, ds_chi, [("out_file", "in_file")]),
            (meta_merge, ds_chi, [("out", "meta_extra")]),
        ])
        for field, suffix in (("xfm", f"from-T1w_to-{template}_mode-image_xfm"),
                              ("inv_xfm", f"from-{template}_to-T1w_mode-image_xfm")):
            sink = pe.Node(DerivativesSink(out_dir=str(output_dir), entities=dict(entities), suffix=suffix,
                                           extension=".h5", sources=srcs),
                           name=f"ds_{field}", run_without_submitting=True)
            workflow.connect([(reg, sink, [(field, "in_file")])])
    return workflow


#: DESIGN.md name of the T1w → template builder.
init_anat_wf = init_template_wf

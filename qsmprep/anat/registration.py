"""ANTs registration driver (antspyx, in-process): presets, ``antsRegistration``, ``antsApplyTransforms``.

The functions work on NIfTI files and call the ``antsRegistration`` / ``antsApplyTransforms``
programs compiled into antspyx (no ANTs installation, no network).  antspyx is imported
when a program is first called (:func:`_lib`), not when this module is imported.

Transform conventions (ANTs/ITK): registering *moving* to *fixed* yields transforms that map
points of the fixed space to the moving space; applied in ``antsApplyTransforms`` order
(``[warp, affine]``, last applied first) they resample the moving image onto the fixed
grid.  So the GRE→T1w affine (``from-GRE_to-T1w``) resamples GRE maps into T1w space, and
inverted (``[file, 1]``) it resamples T1w labels into GRE space.

References
----------
Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration with
cross-correlation: evaluating automated labeling of elderly and neurodegenerative brain.
Medical Image Analysis 12(1):26-41, 2008.

Mattes D, Haynor DR, Vesselle H, Lewellen TK, Eubank W. PET-CT image registration in the
chest using free-form deformations. IEEE Transactions on Medical Imaging 22(1):120-128, 2003.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np


#: A 3-level pyramid from 1/4 resolution, few iterations, 10 % of the voxels sampled.
_THREE_LEVEL = {"shrink_factors": (4, 2, 1), "smoothing_sigmas": (2.0, 1.0, 0.0),
                "iterations": (250, 100, 20), "sampling_rate": 0.1, "bins": 32}
#: Registration presets.  ``precise`` (antsRegistrationSyN's 4-level schedule) is the default
#: of :func:`register` and of the linear stages before a SyN; ``sloppy`` trades accuracy for
#: speed (``--sloppy``).  ``gre2t1w``, the default of the GRE→T1w coregistration, is the
#: 3-level schedule: a same-subject, same-session head needs no 1/8-resolution search
#: (moments initialisation starts within the capture range).  On the 1 mm demo, three head
#: motions up to 10° and 8 mm, 2 cores (``benchmarks/bench_registration.py --skip-syn``) it was
#: as accurate as ``precise`` at 0.4 of the time: 6.6/6.7/6.9 s against 16.2/16.2/16.3 s;
#: rotation error 0.053/0.104/0.024° against 0.008/0.021/0.123°, translation 0.033/0.017/0.027
#: against 0.031/0.041/0.059 mm, worst displacement over the brain box 0.22/0.27/0.24 against
#: 0.22/0.26/0.34 mm, deep-grey χ ROI error (T1w labels in GRE space) 0.0135/0.0179/0.0179
#: against 0.0140/0.0184/0.0201 ppm.  The rotation errors of either move by ~0.05° from run
#: to run (threads); the worst case of each is about 0.1°.
LINEAR_PRESETS = {
    "precise": {"shrink_factors": (8, 4, 2, 1), "smoothing_sigmas": (3.0, 2.0, 1.0, 0.0),
                "iterations": (1000, 500, 250, 100), "sampling_rate": 0.25, "bins": 32},
    "gre2t1w": _THREE_LEVEL,
    "sloppy": _THREE_LEVEL,
}
SYN_PRESETS = {
    # cross-correlation (radius 2 voxels, the antsRegistrationSyN.sh metric) on the 1/8, 1/4 and
    # 1/2 resolution levels: a full-resolution CC level costs ~8x the rest (minutes at 1 mm)
    "precise": {"shrink_factors": (8, 4, 2), "smoothing_sigmas": (3.0, 2.0, 1.0),
                "iterations": (100, 70, 50), "metric": "CC", "radius_or_bins": 2},
    # antsRegistrationSyNQuick.sh-like: mutual information, no full-resolution level
    "sloppy": {"shrink_factors": (8, 4, 2), "smoothing_sigmas": (3.0, 2.0, 1.0),
               "iterations": (100, 70, 50), "metric": "MI", "radius_or_bins": 32},
}
STAGES = ("translation", "rigid", "affine", "syn")
INTERPOLATIONS = ("linear", "nearestNeighbor", "genericLabel", "bSpline", "lanczosWindowedSinc")
INITIALIZATIONS = {"geometry": 0, "moments": 1, "origin": 2}


def linear_schedule(stages, preset="precise"):
    """The pyramid each linear stage of ``stages`` runs: ``[(stage, levels), ...]``.

    ``levels`` is a list of ``(shrink factor, smoothing sigma in voxels, iterations)`` from
    :data:`LINEAR_PRESETS`.  In a chain of linear stages each starts from the previous one's
    result, so a stage followed by another linear stage stops before the full-resolution
    level (the next one refines there) and a stage that follows another skips the coarsest
    level (the alignment it would find is the one it starts from).  A single linear stage
    runs the whole pyramid.  Measured on the 1 mm demo (GRE→T1w rigid + affine, three head
    motions up to 10° and 8 mm, 2 cores): 44.4/46.0/42.3 s → 25.8/33.3/29.9 s, rotation
    error against the true motion 0.081/0.195/0.077° → 0.027/0.104/0.086°, translation
    0.038/0.065/0.028 → 0.034/0.046/0.030 mm (dropping the full-resolution level of *both*
    stages instead doubled the rotation error, 0.19°).
    """
    if preset not in LINEAR_PRESETS:
        raise ValueError(f"preset must be one of {sorted(LINEAR_PRESETS)}, got {preset!r}")
    p = LINEAR_PRESETS[preset]
    levels = list(zip(p["shrink_factors"], p["smoothing_sigmas"], p["iterations"]))
    linear = [s for s in stages if s != "syn"]
    out = []
    for i, stage in enumerate(linear):
        lv = levels
        if i + 1 < len(linear) and len(lv) > 1:
            lv = lv[:-1]
        if i > 0 and len(lv) > 1:
            lv = lv[1:]
        out.append((stage, lv))
    return out


def _lib(name):
    from ants.internal import get_lib_fn

    return get_lib_fn(name)


def set_threads(num_threads):
    """Number of ITK threads of the in-process ANTs programs (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``)."""
    if int(num_threads) < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(num_threads))


def _vec(values, fmt="{:g}"):
    return "x".join(fmt.format(v) for v in values)


def register(fixed, moving, out_prefix, *, stages=("rigid", "affine"), preset="precise", fixed_mask=None,
             moving_mask=None, initialize="moments", initial_transform=None, metric_linear="MI",
             random_seed=42, num_threads=1, syn_preset=None, composite=False, sampling_rate=None, bins=None):
    """Register ``moving`` to ``fixed`` with ``antsRegistration`` (multi-resolution, multi-stage).

    Linear stages use Mattes mutual information (Mattes et al., IEEE TMI 2003) with regular
    random sampling; the SyN stage is symmetric normalisation (Avants et al., Med Image Anal
    2008) with cross-correlation (``precise``) or mutual information (``sloppy``).

    Parameters
    ----------
    fixed, moving : path-like
        NIfTI images.
    out_prefix : path-like
        Prefix of the written transforms (``<prefix>0GenericAffine.mat``, ``<prefix>1Warp.nii.gz``,
        ``<prefix>1InverseWarp.nii.gz``; or ``<prefix>Composite.h5`` / ``InverseComposite.h5``).
    stages : sequence of {"translation", "rigid", "affine", "syn"}
        Stages in order; linear stages are collapsed into one affine.
    preset : {"precise", "sloppy"}
        Pyramid, iterations and sampling of the linear stages (:data:`LINEAR_PRESETS`,
        split between chained linear stages by :func:`linear_schedule`).
    fixed_mask, moving_mask : path-like, optional
        Metric masks (every stage).
    initialize : {"moments", "geometry", "origin"}
        Initial alignment when ``initial_transform`` is not given: centres of mass, image
        centres, or identity (``origin``).
    initial_transform : path-like, optional
        An ANTs transform file to start from.
    metric_linear : {"MI", "GC", "MeanSquares"}
        Metric of the linear stages.
    random_seed : int
        Seed of the metric's random sampling (reproducible results).
    num_threads : int
        ITK threads.
    syn_preset : {"precise", "sloppy"}, optional
        SyN settings (:data:`SYN_PRESETS`); defaults to ``preset``.
    composite : bool
        Write one composite ``.h5`` (forward and inverse) instead of separate files.

    Returns
    -------
    dict
        ``forward``: transforms (antsApplyTransforms order) resampling moving onto fixed;
        ``inverse``: (file, invert flag) pairs resampling fixed onto moving;
        ``warped``: the moving image resampled onto the fixed grid (linear).
    """
    stages = tuple(s.lower() for s in stages)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"stages must be a non-empty sequence of {STAGES}, got {stages}")
    if preset not in LINEAR_PRESETS:
        raise ValueError(f"preset must be one of {sorted(LINEAR_PRESETS)}, got {preset!r}")
    syn_preset = (preset if preset in SYN_PRESETS else "precise") if syn_preset is None else syn_preset
    if syn_preset not in SYN_PRESETS:
        raise ValueError(f"syn_preset must be one of {sorted(SYN_PRESETS)}, got {syn_preset!r}")
    if initialize not in INITIALIZATIONS:
        raise ValueError(f"initialize must be one of {sorted(INITIALIZATIONS)}, got {initialize!r}")
    if metric_linear not in ("MI", "GC", "MeanSquares"):
        raise ValueError(f"metric_linear must be MI, GC or MeanSquares, got {metric_linear!r}")
    fixed, moving = os.fspath(fixed), os.fspath(moving)
    out_prefix = os.fspath(out_prefix)
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    set_threads(num_threads)

    lin = dict(LINEAR_PRESETS[preset])
    if sampling_rate is not None:
        if not 0 < float(sampling_rate) <= 1:
            raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
        lin["sampling_rate"] = float(sampling_rate)
    if bins is not None:
        if int(bins) < 8:
            raise ValueError(f"bins must be >= 8, got {bins}")
        lin["bins"] = int(bins)
    strategy = "None" if lin["sampling_rate"] >= 1 else "Regular"
    syn = SYN_PRESETS[syn_preset]
    warped = out_prefix + "Warped.nii.gz"
    args = ["--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
            "--output", f"[{out_prefix},{warped}]", "--interpolation", "Linear",
            "--winsorize-image-intensities", "[0.005,0.995]", "--use-histogram-matching", "0",
            "--random-seed", str(int(random_seed)), "--write-composite-transform", str(int(bool(composite)))]
    if initial_transform is not None:
        args += ["--initial-moving-transform", os.fspath(initial_transform)]
    else:
        args += ["--initial-moving-transform", f"[{fixed},{moving},{INITIALIZATIONS[initialize]}]"]
    masks = f"[{os.fspath(fixed_mask) if fixed_mask else 'NA'},{os.fspath(moving_mask) if moving_mask else 'NA'}]"
    last_linear = max((i for i, s in enumerate(stages) if s != "syn"), default=-1)
    schedule = iter(linear_schedule(stages, preset))
    for stage in stages:
        if stage == "syn":
            if syn["metric"] == "CC":
                metric = f"CC[{fixed},{moving},1,{syn['radius_or_bins']}]"
            else:
                metric = f"MI[{fixed},{moving},1,{syn['radius_or_bins']}]"
            args += ["--transform", "SyN[0.2,3,0]", "--metric", metric,
                     "--convergence", f"[{_vec(syn['iterations'])},1e-6,10]",
                     "--shrink-factors", _vec(syn["shrink_factors"]),
                     "--smoothing-sigmas", _vec(syn["smoothing_sigmas"]) + "vox"]
        else:
            name = {"translation": "Translation", "rigid": "Rigid", "affine": "Affine"}[stage]
            if metric_linear == "MI":
                metric = f"MI[{fixed},{moving},1,{lin['bins']},{strategy},{lin['sampling_rate']}]"
            elif metric_linear == "GC":
                metric = f"GC[{fixed},{moving},1,1,{strategy},{lin['sampling_rate']}]"
            else:
                metric = f"MeanSquares[{fixed},{moving},1,1,{strategy},{lin['sampling_rate']}]"
            _, levels = next(schedule)
            shrink, sigmas, iters = zip(*levels)
            args += ["--transform", f"{name}[0.1]", "--metric", metric,
                     "--convergence", f"[{_vec(iters)},1e-6,10]",
                     "--shrink-factors", _vec(shrink),
                     "--smoothing-sigmas", _vec(sigmas) + "vox"]
    if fixed_mask or moving_mask:  # one mask specification: used by every stage
        args += ["--masks", masks]
    ret = _lib("antsRegistration")([str(a) for a in args])
    if ret != 0:
        raise RuntimeError(f"antsRegistration failed with exit code {ret} (fixed {fixed}, moving {moving})")
    if composite:
        forward = [out_prefix + "Composite.h5"]
        inverse = [(out_prefix + "InverseComposite.h5", False)]
    else:
        affine = out_prefix + "0GenericAffine.mat"
        has_linear = last_linear >= 0
        if "syn" in stages:
            idx = 1 if has_linear else 0
            warp, iwarp = f"{out_prefix}{idx}Warp.nii.gz", f"{out_prefix}{idx}InverseWarp.nii.gz"
            forward = [warp, affine] if has_linear else [warp]
            inverse = [(affine, True), (iwarp, False)] if has_linear else [(iwarp, False)]
        else:
            forward, inverse = [affine], [(affine, True)]
    for path in forward + [p for p, _ in inverse]:
        if not os.path.exists(path):
            raise RuntimeError(f"antsRegistration did not write {path}")
    return {"forward": forward, "inverse": inverse, "warped": warped}


def apply_transforms(in_file, reference, transforms, out_file, *, interpolation="linear", default_value=0.0,
                     num_threads=1, dtype=None):
    """Resample ``in_file`` onto the grid of ``reference`` through ``transforms`` (antsApplyTransforms).

    Parameters
    ----------
    in_file, reference : path-like
        Image to resample and the image whose grid the output takes.
    transforms : sequence
        Transform files in antsApplyTransforms order (last applied first); an item may be a
        ``(path, invert)`` pair to invert an affine.  An empty list means identity (resampling
        through world coordinates only).
    out_file : path-like
        Output NIfTI.
    interpolation : str
        One of :data:`INTERPOLATIONS` (``nearestNeighbor`` or ``genericLabel`` for labels).
    default_value : float
        Value outside the input's field of view.
    dtype : numpy dtype, optional
        Output data type (labels: an integer type); float32 by default.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    set_threads(num_threads)
    out_file = os.fspath(out_file)
    tmp = out_file + ".ants.nii.gz"
    in_img = nib.load(in_file)
    args = ["-d", "3", "-i", os.fspath(in_file), "-r", os.fspath(reference), "-o", tmp,
            "-n", "NearestNeighbor" if interpolation == "nearestNeighbor" else
            {"linear": "Linear", "genericLabel": "GenericLabel[Linear]", "bSpline": "BSpline[3]",
             "lanczosWindowedSinc": "LanczosWindowedSinc"}[interpolation],
            "-f", repr(float(default_value)), "--float", "1", "-v", "0"]
    if in_img.ndim == 4:
        args += ["-e", "3"]
    transforms = list(transforms) or ["identity"]
    for item in transforms:
        path, invert = (item if isinstance(item, (tuple, list)) else (item, False))
        args += ["-t", f"[{os.fspath(path)},1]" if invert else os.fspath(path)]
    ret = _lib("antsApplyTransforms")([str(a) for a in args])
    if ret != 0 or not os.path.exists(tmp):
        raise RuntimeError(f"antsApplyTransforms failed with exit code {ret} for {in_file}")
    # rewrite with the reference's exact header (ITK may round the affine) and the wanted dtype
    out = nib.load(tmp)
    ref = nib.load(reference)
    data = np.asanyarray(out.dataobj)
    dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
    if np.issubdtype(dtype, np.integer):
        data = np.rint(data)
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(data.shape)
    header["scl_slope"], header["scl_inter"] = np.nan, np.nan
    nib.Nifti1Image(data.astype(dtype), ref.affine, header).to_filename(out_file)
    os.unlink(tmp)
    return out_file

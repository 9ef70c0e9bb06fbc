"""ANTs registration (antspyx, in-process) and resampling between GRE, T1w and template spaces.

Functions work on NIfTI files and call the ``antsRegistration`` / ``antsApplyTransforms``
programs compiled into antspyx (no ANTs installation, no network).  The Nipype interfaces
below wrap them for the workflows in :mod:`qsmprep.workflows.coreg`,
:mod:`qsmprep.workflows.anat` and :mod:`qsmprep.workflows.roi`.

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

Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible evaluation of ANTs
similarity metric performance in brain image registration. NeuroImage 54(3):2033-2044, 2011.

Mattes D, Haynor DR, Vesselle H, Lewellen TK, Eubank W. PET-CT image registration in the
chest using free-form deformations. IEEE Transactions on Medical Imaging 22(1):120-128, 2003.

Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE Transactions
on Medical Imaging 29(6):1310-1320, 2010.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec, isdefined, traits,
)

#: Registration presets.  ``precise`` is the default; ``sloppy`` trades accuracy for speed
#: (coarser pyramid, fewer iterations, fewer metric samples; used by ``--sloppy``).
LINEAR_PRESETS = {
    "precise": {"shrink_factors": (8, 4, 2, 1), "smoothing_sigmas": (3.0, 2.0, 1.0, 0.0),
                "iterations": (1000, 500, 250, 100), "sampling_rate": 0.25, "bins": 32},
    "sloppy": {"shrink_factors": (4, 2, 1), "smoothing_sigmas": (2.0, 1.0, 0.0),
               "iterations": (250, 100, 20), "sampling_rate": 0.1, "bins": 32},
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
        Pyramid, iterations and sampling of the linear stages (:data:`LINEAR_PRESETS`).
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
    syn_preset = preset if syn_preset is None else syn_preset
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
            args += ["--transform", f"{name}[0.1]", "--metric", metric,
                     "--convergence", f"[{_vec(lin['iterations'])},1e-6,10]",
                     "--shrink-factors", _vec(lin["shrink_factors"]),
                     "--smoothing-sigmas", _vec(lin["smoothing_sigmas"]) + "vox"]
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


# ---------------------------------------------------------------------------------------------
# ITK affine files <-> world (RAS) matrices

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_affine(path):
    """4×4 world (RAS, mm) matrix of an ANTs/ITK affine ``.mat`` file.

    The returned matrix maps a point of the *fixed* space to the *moving* space, as the ITK
    transform does (so for ``from-GRE_to-T1w`` it maps T1w world points to GRE world points).
    """
    import ants

    tx = ants.read_transform(os.fspath(path))
    params = np.asarray(tx.parameters, dtype=float)
    centre = np.asarray(tx.fixed_parameters, dtype=float)
    mat = params[:9].reshape(3, 3)
    trans = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = mat
    lps[:3, 3] = trans + centre - mat @ centre
    return _LPS @ lps @ _LPS


def write_affine(matrix, path):
    """Write a 4×4 world (RAS) matrix (fixed → moving points) as an ITK affine ``.mat`` file."""
    import ants

    lps = _LPS @ np.asarray(matrix, dtype=float) @ _LPS
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="float", dimension=3,
                                    matrix=lps[:3, :3], offset=lps[:3, 3])
    ants.write_transform(tx, os.fspath(path))
    return os.fspath(path)


def invert_affine_file(in_file, out_file):
    """Write the inverse of an affine ``.mat`` file (e.g. ``from-T1w_to-GRE`` from ``from-GRE_to-T1w``)."""
    return write_affine(np.linalg.inv(read_affine(in_file)), out_file)


def rigid_error(estimated, truth, points=None):
    """Rotation (degrees) and translation (mm) error between two 4×4 world matrices.

    The rotation error is the angle of ``R_est · R_trueᵀ`` (after polar decomposition of the
    estimated linear part); the translation error is the largest displacement difference over
    ``points`` (N×3, mm; default: the world origin).
    """
    est, tru = np.asarray(estimated, float), np.asarray(truth, float)
    u, _, vt = np.linalg.svd(est[:3, :3])
    rot = u @ vt
    delta = rot @ tru[:3, :3].T
    angle = float(np.degrees(np.arccos(np.clip((np.trace(delta) - 1) / 2, -1, 1))))
    pts = np.zeros((1, 3)) if points is None else np.asarray(points, float).reshape(-1, 3)
    hom = np.c_[pts, np.ones(len(pts))]
    diff = hom @ est.T - hom @ tru.T
    return angle, float(np.linalg.norm(diff[:, :3], axis=1).max())


# ---------------------------------------------------------------------------------------------
# T1w brain extraction without network


def _largest_component(mask):
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _ball(radius_mm, voxel_size):
    r = [max(1, int(np.floor(radius_mm / v))) for v in voxel_size]
    ii, jj, kk = np.meshgrid(*[np.arange(-n, n + 1) for n in r], indexing="ij")
    return (ii * voxel_size[0]) ** 2 + (jj * voxel_size[1]) ** 2 + (kk * voxel_size[2]) ** 2 <= radius_mm**2


def brain_mask_threshold(image, voxel_size, *, open_mm=4.0, close_mm=4.0):
    """Brain mask of a T1w image by thresholding and morphology (no template, no network).

    Intensities are bias-corrected beforehand (N4 in :func:`brain_extract_t1w`).  A
    two-threshold Otsu (Otsu, IEEE Trans. Syst. Man Cybern. 1979) separates background /
    CSF / skull from tissue; an opening with a ``open_mm`` ball cuts the thin bridges between
    brain and scalp through the dark skull and CSF, the largest component is the brain, which
    is closed (``close_mm``), hole-filled and restored to its size by the opening's dilation.

    Parameters
    ----------
    image : ndarray
        Bias-corrected T1w intensities.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    open_mm, close_mm : float
        Radii of the opening and closing balls.

    Returns
    -------
    ndarray of bool
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_multiotsu, threshold_otsu

    if open_mm <= 0 or close_mm < 0:
        raise ValueError(f"open_mm must be > 0 and close_mm >= 0, got {open_mm}, {close_mm}")
    img = np.asarray(image, dtype=np.float32)
    head = img > threshold_otsu(img)
    vals = img[ndi.binary_dilation(head, iterations=2)]
    try:
        low, _ = threshold_multiotsu(vals, classes=3)
    except ValueError:
        low = threshold_otsu(vals)
    tissue = img > low
    opened = ndi.binary_opening(tissue, structure=_ball(open_mm, voxel_size))
    brain = _largest_component(opened)
    brain = ndi.binary_dilation(brain, structure=_ball(open_mm, voxel_size)) & tissue
    if close_mm > 0:
        pad = int(np.ceil(close_mm / min(voxel_size))) + 1
        padded = np.pad(brain, pad)
        padded = ndi.binary_closing(padded, structure=_ball(close_mm, voxel_size))
        brain = padded[pad:-pad, pad:-pad, pad:-pad]
    filled = np.zeros_like(brain)
    for k in range(brain.shape[2]):  # fill the enclosed CSF (ventricles) slice by slice, then in 3D
        filled[..., k] = ndi.binary_fill_holes(brain[..., k])
    return ndi.binary_fill_holes(filled)


def brain_extract_t1w(t1w, out_dir, *, method="threshold", template=None, template_mask=None, num_threads=1,
                      preset="sloppy"):
    """Skull-strip a T1w without network access.

    Parameters
    ----------
    t1w : path-like
        T1w NIfTI (with skull).
    out_dir : path-like
        Folder for the outputs.
    method : {"threshold", "template", "none"}
        ``threshold``: N4 bias correction (Tustison et al., IEEE TMI 2010) then
        :func:`brain_mask_threshold`; ``template``: affine + SyN registration of a template
        head (``template``) to the T1w and its brain mask (``template_mask``) warped back
        (the registration half of antsBrainExtraction.sh, Avants et al., NeuroImage 2011),
        intersected with the bias-corrected tissue threshold; ``none``: the T1w is already
        skull-stripped (mask = nonzero voxels).
    template, template_mask : path-like
        Template T1w and brain mask for ``method="template"`` (e.g. from TemplateFlow).

    Returns
    -------
    dict
        ``brain`` (bias-corrected, masked T1w), ``mask`` and ``corrected`` (bias-corrected T1w).
    """
    import ants
    from scipy import ndimage as ndi

    if method not in ("threshold", "template", "none"):
        raise ValueError(f"method must be 'threshold', 'template' or 'none', got {method!r}")
    if method == "template" and (template is None or template_mask is None):
        raise ValueError("method 'template' needs template and template_mask")
    set_threads(num_threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img = nib.load(t1w)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    vs = tuple(float(z) for z in img.header.get_zooms()[:3])
    if method == "none":
        mask = data > 0
        corrected = data
    else:
        ai = ants.image_read(os.fspath(t1w))
        if ai.dimension == 4:
            ai = ants.slice_image(ai, axis=3, idx=0)
        ai = ai.new_image_like(np.clip(ai.numpy(), 0, None).astype(np.float32))
        head = ants.get_mask(ai)
        # N4 on a ~4 mm grid: the bias field is smooth, and full resolution costs minutes
        shrink = int(max(1, min(4, round(4.0 / max(min(vs), 1e-3)))))
        corrected = ants.n4_bias_field_correction(
            ai, mask=head, shrink_factor=shrink, convergence={"iters": [50, 50, 50, 50], "tol": 1e-4},
        )
        corrected = corrected.numpy().astype(np.float32)
        if method == "threshold":
            mask = brain_mask_threshold(corrected, vs)
        else:
            tmp = out_dir / "_t1w_n4.nii.gz"
            nib.Nifti1Image(corrected, img.affine).to_filename(tmp)
            reg = register(tmp, template, out_dir / "tpl2t1w_", stages=("rigid", "affine", "syn"),
                           preset=preset, syn_preset="sloppy", num_threads=num_threads)
            warped_mask = apply_transforms(template_mask, tmp, reg["forward"], out_dir / "_mask_t1w.nii.gz",
                                           interpolation="linear", num_threads=num_threads)
            prob = np.asarray(nib.load(warped_mask).dataobj, dtype=np.float32)
            mask = ndi.binary_fill_holes(_largest_component(prob >= 0.5))
    mask = np.asarray(mask, dtype=bool)
    brain = np.where(mask, corrected, 0).astype(np.float32)
    paths = {}
    for name, arr, dt in (("brain", brain, np.float32), ("mask", mask.astype(np.uint8), np.uint8),
                          ("corrected", np.asarray(corrected, np.float32), np.float32)):
        hdr = img.header.copy()
        hdr.set_data_dtype(dt)
        hdr.set_data_shape(arr.shape)
        hdr["scl_slope"], hdr["scl_inter"] = np.nan, np.nan
        path = out_dir / f"t1w_{name}.nii.gz"
        nib.Nifti1Image(arr.astype(dt), img.affine, hdr).to_filename(path)
        paths[name] = os.fspath(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Nipype interfaces


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
    """Skull-strip the T1w without network access (:func:`brain_extract_t1w`)."""

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
    preset = traits.Enum("precise", "sloppy", usedefault=True, desc="registration settings")
    dilate_mm = traits.Float(4.0, usedefault=True, desc="dilation of the T1w brain mask for the metric")
    random_seed = traits.Int(42, usedefault=True, desc="seed of the metric sampling")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _CoregOutputSpec(TraitedSpec):
    xfm = File(exists=True, desc="from-GRE_to-T1w affine (.mat; resamples GRE images into T1w space)")
    inv_xfm = File(exists=True, desc="from-T1w_to-GRE affine (.mat)")
    warped = File(exists=True, desc="GRE magnitude resampled into T1w space")
    info = traits.Dict(desc="sidecar metadata")


class CoregGREtoT1w(SimpleInterface):
    """Affine registration of the GRE echo-averaged magnitude to the T1w (:func:`register`).

    Rigid then affine, Mattes mutual information, 4-level pyramid (antsRegistrationSyN[a]
    schedule), metric restricted to the dilated T1w brain mask so the skull and neck of the
    T1w do not drive the fit.
    """

    input_spec = _CoregInputSpec
    output_spec = _CoregOutputSpec

    def _run_interface(self, runtime):
        from scipy import ndimage as ndi

        inp = self.inputs
        fixed_mask = None
        if isdefined(inp.fixed_mask):
            img = nib.load(inp.fixed_mask)
            mask = np.asarray(img.dataobj) > 0
            if inp.dilate_mm > 0:
                vs = [float(z) for z in img.header.get_zooms()[:3]]
                mask = ndi.binary_dilation(mask, structure=_ball(inp.dilate_mm, vs))
            fixed_mask = os.path.join(runtime.cwd, "fixed_mask.nii.gz")
            nib.Nifti1Image(mask.astype(np.uint8), img.affine).to_filename(fixed_mask)
        reg = register(
            inp.fixed, inp.moving, os.path.join(runtime.cwd, "gre2t1w_"), stages=tuple(inp.stages),
            preset=inp.preset, fixed_mask=fixed_mask,
            moving_mask=inp.moving_mask if isdefined(inp.moving_mask) else None,
            random_seed=inp.random_seed, num_threads=inp.num_threads,
        )
        xfm = os.path.join(runtime.cwd, "from-GRE_to-T1w_mode-image_xfm.mat")
        shutil.copyfile(reg["forward"][0], xfm)
        inv = invert_affine_file(xfm, os.path.join(runtime.cwd, "from-T1w_to-GRE_mode-image_xfm.mat"))
        self._results.update({"xfm": xfm, "inv_xfm": inv, "warped": reg["warped"]})
        self._results["info"] = {
            "Registration": "antsRegistration (antspyx): " + " + ".join(inp.stages)
            + ", Mattes mutual information, multi-resolution",
            "RegistrationPreset": inp.preset,
            "RegistrationParameters": dict(LINEAR_PRESETS[inp.preset]),
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
    """Rigid + affine + SyN registration of the T1w brain to a template (:func:`register`)."""

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
    """Resample an image through a list of ANTs transforms (:func:`apply_transforms`)."""

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

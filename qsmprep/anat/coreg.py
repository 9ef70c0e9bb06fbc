"""GRE → T1w coregistration: dilated T1w brain mask as metric mask, affine registration, inverse."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.anat._morphology import ball
from qsmprep.anat.registration import register
from qsmprep.anat.transforms import invert_affine_file


def write_dilated_mask(mask_file, out_file, radius_mm):
    """Write ``mask_file`` (nonzero voxels) dilated by a ball of ``radius_mm`` as a uint8 NIfTI.

    ``radius_mm <= 0`` writes the mask undilated.  Returns the path of ``out_file``.
    """
    from scipy import ndimage as ndi

    img = nib.load(mask_file)
    mask = np.asarray(img.dataobj) > 0
    if radius_mm > 0:
        vs = [float(z) for z in img.header.get_zooms()[:3]]
        mask = ndi.binary_dilation(mask, structure=ball(radius_mm, vs))
    out_file = os.fspath(out_file)
    nib.Nifti1Image(mask.astype(np.uint8), img.affine).to_filename(out_file)
    return out_file


def coregister_gre_to_t1w(fixed, moving, out_dir, *, fixed_mask=None, moving_mask=None, stages=("rigid", "affine"),
                          preset="gre2t1w", dilate_mm=4.0, random_seed=42, num_threads=1):
    """Affine registration of the GRE echo-averaged magnitude (``moving``) to the T1w (``fixed``).

    Linear stages of :func:`qsmprep.anat.registration.register` (Mattes mutual information,
    multi-resolution), the metric restricted to the T1w brain mask dilated by ``dilate_mm``
    so the skull and neck of the T1w do not drive the fit.

    Parameters
    ----------
    fixed, moving : path-like
        T1w (bias-corrected; with or without skull) and GRE magnitude.
    out_dir : path-like
        Folder for the outputs.
    fixed_mask, moving_mask : path-like, optional
        T1w brain mask (dilated, then the fixed metric mask) and GRE brain mask.
    stages, preset, random_seed, num_threads
        As in :func:`qsmprep.anat.registration.register`; ``preset`` ``gre2t1w`` is the
        3-level schedule measured for this registration (see ``LINEAR_PRESETS``).
    dilate_mm : float
        Dilation of ``fixed_mask`` (mm).

    Returns
    -------
    dict
        ``xfm``: ``from-GRE_to-T1w_mode-image_xfm.mat`` (resamples GRE images into T1w space);
        ``inv_xfm``: ``from-T1w_to-GRE_mode-image_xfm.mat``; ``warped``: the GRE magnitude in
        T1w space.
    """
    out_dir = Path(out_dir)
    if fixed_mask is not None:
        fixed_mask = write_dilated_mask(fixed_mask, out_dir / "fixed_mask.nii.gz", dilate_mm)
    reg = register(
        fixed, moving, os.path.join(out_dir, "gre2t1w_"), stages=tuple(stages), preset=preset,
        fixed_mask=fixed_mask, moving_mask=moving_mask, random_seed=random_seed, num_threads=num_threads,
    )
    xfm = os.path.join(out_dir, "from-GRE_to-T1w_mode-image_xfm.mat")
    shutil.copyfile(reg["forward"][0], xfm)
    inv = invert_affine_file(xfm, os.path.join(out_dir, "from-T1w_to-GRE_mode-image_xfm.mat"))
    return {"xfm": xfm, "inv_xfm": inv, "warped": reg["warped"]}


def register_to_gre(moving, gre_reference, out_dir, *, name="aligned", num_threads=1, random_seed=42):
    """Rigid transform from another image of the session (an R2 map, a FLAIR) to the GRE grid.

    On the GRE grid already (same shape, affine within 1e-3 mm): no transform.  Otherwise
    registered rigidly to the GRE echo-averaged magnitude (``gre_reference``) with
    :func:`qsmprep.anat.registration.register` (Mattes mutual information, which copes with
    the images' different contrast; started from the scanner coordinates, which agree for
    scans of one session).

    Returns ``(transforms, info)``: the antsApplyTransforms list (empty on the same grid) and
    a ``Registration`` sidecar entry saying which was done.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img, ref = nib.load(moving), nib.load(gre_reference)
    if img.shape[:3] == ref.shape[:3] and np.allclose(img.affine, ref.affine, atol=1e-3):
        return [], {"Registration": "none: the image is in the GRE grid"}
    res = register(gre_reference, moving, os.fspath(out_dir / f"{name}_"), stages=("rigid",),
                   initialize="origin", random_seed=random_seed, num_threads=num_threads)
    return list(res["forward"]), {"Registration": "rigid to the GRE echo-averaged magnitude (antsRegistration, "
                                                  "Mattes mutual information, from scanner coordinates)"}


def align_to_gre(moving, gre_reference, out_dir, *, name="aligned", num_threads=1, random_seed=42):
    """Bring a map of another acquisition of the session (an R2 map) into the GRE grid:
    :func:`register_to_gre`, then linear resampling.

    Returns ``(path in the GRE grid, info)``; info's ``Registration`` says which was done.
    """
    from qsmprep.anat.registration import apply_transforms

    out_dir = Path(out_dir)
    transforms, info = register_to_gre(moving, gre_reference, out_dir, name=name, num_threads=num_threads,
                                       random_seed=random_seed)
    if not transforms:
        return os.fspath(moving), {"Registration": "none: the map is in the GRE grid"}
    out = apply_transforms(moving, gre_reference, transforms, out_dir / f"{name}.nii.gz",
                           interpolation="linear", num_threads=num_threads)
    return os.fspath(out), {"Registration": info["Registration"] + "; linear interpolation"}

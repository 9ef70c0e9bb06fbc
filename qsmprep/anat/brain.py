"""T1w brain extraction without network access: N4 bias correction, then a threshold or a template.

References
----------
Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible evaluation of ANTs
similarity metric performance in brain image registration. NeuroImage 54(3):2033-2044, 2011.

Otsu N. A threshold selection method from gray-level histograms. IEEE Transactions on Systems,
Man, and Cybernetics 9(1):62-66, 1979.

Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE Transactions
on Medical Imaging 29(6):1310-1320, 2010.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.anat._morphology import ball, largest_component
from qsmprep.anat.registration import apply_transforms, register, set_threads


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
    opened = ndi.binary_opening(tissue, structure=ball(open_mm, voxel_size))
    brain = largest_component(opened)
    brain = ndi.binary_dilation(brain, structure=ball(open_mm, voxel_size)) & tissue
    if close_mm > 0:
        pad = int(np.ceil(close_mm / min(voxel_size))) + 1
        padded = np.pad(brain, pad)
        padded = ndi.binary_closing(padded, structure=ball(close_mm, voxel_size))
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
            mask = ndi.binary_fill_holes(largest_component(prob >= 0.5))
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

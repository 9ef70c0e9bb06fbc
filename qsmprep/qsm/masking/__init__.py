"""Brain masking on the echo-averaged magnitude.

Three pieces, combined by :func:`brain_mask`:

* :func:`threshold_mask`: Otsu (or a given) threshold with morphological clean-up, the
  QSMxT-style fallback;
* :func:`bet_mask`: a BET deformable-surface brain extraction (Smith, Hum Brain Mapp
  2002), written here with numpy/scipy: icosphere tessellation, the three update terms,
  the intensity parameters t2, t98, t, tm, a self-intersection check, and a parity
  ray-casting fill of the final surface;
* :func:`refine_mask`: removal of voxels whose phase is unreliable (low phase quality or a
  high field-fit noise), keeping the mask filled, optionally eroded by a ball in mm.

Arrays are in voxel order and ``voxel_size`` is in mm per axis; anisotropic voxels are
handled by working in mm throughout.

One method per module: ``threshold.py``, ``bet.py``, ``refine.py``, and ``coverage.py``
(:func:`assess_coverage` and :func:`tissue_mask`, method ``"none"``); the checks and ball
morphology they share in ``_morphology.py``.  Each option's default is in the signature of
the function that uses it; :func:`default_parameters` reads them from there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from qsmprep.qsm._params import jsonable, keyword_defaults
from qsmprep.qsm.masking._morphology import _check_volume, _check_voxel_size, dilate_mm, erode_mm, largest_component
from qsmprep.qsm.masking.bet import bet_mask, bet_surface, icosphere, surface_self_intersects, surface_to_mask
from qsmprep.qsm.masking.coverage import (
    DARK_FRACTION,
    MAX_BOUNDARY_TISSUE_FRACTION,
    MIN_BACKGROUND_FRACTION,
    NOISE_MEDIAN_FACTOR,
    assess_coverage,
    tissue_mask,
)
from qsmprep.qsm.masking.refine import _check_map, _noise_threshold, refine_mask
from qsmprep.qsm.masking.threshold import otsu_threshold, threshold_mask

__all__ = ["DARK_FRACTION", "MAX_BOUNDARY_TISSUE_FRACTION", "METHODS", "MIN_BACKGROUND_FRACTION",
           "NOISE_MEDIAN_FACTOR", "assess_coverage", "bet_mask", "bet_surface", "brain_mask", "default_parameters",
           "dilate_mm", "erode_mm", "icosphere", "largest_component", "otsu_threshold", "refine_mask",
           "surface_self_intersects", "surface_to_mask", "threshold_mask", "tissue_mask"]

METHODS = ("threshold", "bet", "none")

#: Each method's function, whose keyword options (with defaults) are the method's own;
#: ``"none"`` (:func:`tissue_mask`) takes no options from :func:`brain_mask`.
_METHOD_FUNCTIONS = {"threshold": threshold_mask, "bet": bet_mask, "none": None}

#: The refinement options' defaults, read by :func:`brain_mask`, which passes them to :func:`refine_mask`.
_REFINE = keyword_defaults(refine_mask)


def brain_mask(magnitude, voxel_size, *, method="threshold", quality=None, noise=None, refine=False,
               erode_mm=_REFINE["erode_mm"], grow_mm=_REFINE["grow_mm"],
               grow_quality_threshold=_REFINE["grow_quality_threshold"],
               quality_threshold=_REFINE["quality_threshold"], noise_threshold=_REFINE["noise_threshold"],
               noise_factor=_REFINE["noise_factor"], user_mask=None, partial_coverage="auto", **params):
    """Brain mask for QSM: ``(tight mask, filled mask, info)``.

    The filled mask is the brain extraction of the echo-averaged magnitude
    (``method="threshold"``: :func:`threshold_mask`; ``"bet"``: :func:`bet_mask`, Smith,
    Hum Brain Mapp 2002; ``"none"``: :func:`tissue_mask`, the whole field of view minus
    noise-only voxels), or ``user_mask`` when given, and is meant for reporting and
    registration.  The tight mask, for background removal and dipole inversion, is the
    filled mask refined by phase quality (:func:`refine_mask`, when ``refine``, using
    ``quality`` and/or ``noise``): unreliable voxels removed, reliable ones within
    ``grow_mm`` of what is left added (the surface veins and sinuses that are dark on the
    magnitude), then eroded by ``erode_mm``.  The growth is not added to the filled mask:
    it is the tight mask's, recomputed from the filled mask, so a run given its own
    ``desc-brain_mask`` as ``user_mask`` reproduces its tight mask exactly; the tight mask
    is a subset of the filled mask dilated by ``grow_mm``.

    Partial coverage (:func:`assess_coverage`: no background in the field of view, or the
    head cut by its faces) makes ``threshold`` and ``bet`` meaningless: with
    ``partial_coverage="auto"`` they then fall back to :func:`tissue_mask` and say so in
    ``info`` (``PartialCoverage``, ``fallback``); ``"ignore"`` keeps the method.

    Parameters
    ----------
    magnitude : ndarray (3D)
        Echo-averaged magnitude.
    voxel_size : sequence of float
        Voxel size (mm).
    method : {"threshold", "bet", "none"}
    quality, noise : ndarray, optional
        Phase-quality map in [0, 1] and field noise map (ppm) for the refinement.
    refine : bool
        Apply the phase-quality refinement (needs ``quality`` or ``noise``).
    erode_mm : float
        Erosion (mm) of the tight mask.
    grow_mm : float
        How far (mm) outside the refined mask reliable-phase voxels join the tight mask
        (:func:`refine_mask`; needs ``quality``).
    quality_threshold, grow_quality_threshold, noise_threshold, noise_factor :
        See :func:`refine_mask`.
    user_mask : ndarray of bool, optional
        A brain mask given by the user; replaces the method's (the refinement still applies).
    partial_coverage : {"auto", "ignore"}
    **params
        Method options (threshold: ``threshold``, ``fill_holes``, ``open_mm``; bet: ``f``,
        ``g`` and the :func:`bet_surface` options).

    Returns
    -------
    tight, filled : ndarray of bool
    info : dict
        JSON-serialisable: the method, the parameters used (e.g. the threshold value, the
        BET intensity parameters), the coverage assessment, any fallback taken, and the
        voxel counts.
    """
    vs = _check_voxel_size(voxel_size)
    if partial_coverage not in ("auto", "ignore"):
        raise ValueError(f"partial_coverage must be 'auto' or 'ignore', got {partial_coverage!r}")
    coverage = assess_coverage(magnitude)
    used = method
    fallback = None
    if user_mask is not None:
        filled = np.asarray(_check_volume(user_mask, "user mask")) > 0
        if filled.shape != np.shape(magnitude):
            raise ValueError(f"the mask's shape {filled.shape} differs from the image's {np.shape(magnitude)}")
        if not filled.any():
            raise ValueError("the given mask is empty")
        method_info = {}
        used = "user"
    else:
        if method in ("threshold", "bet") and coverage["partial_coverage"] and partial_coverage == "auto":
            fallback = (f"partial coverage ({coverage['reason']}): the imaged tissue is kept ('none') "
                        f"instead of the '{method}' brain extraction")
            used = "none"
        if used == "threshold":
            filled, thr = threshold_mask(magnitude, vs, **params)
            method_info = {**params, "threshold": thr}
        elif used == "bet":
            filled, method_info = bet_mask(magnitude, vs, return_info=True, **params)
            filled = ndimage.binary_fill_holes(filled)
        elif used == "none":
            filled, thr = tissue_mask(magnitude, vs, coverage=coverage)
            method_info = {"noise_threshold_magnitude": thr}
        else:
            raise ValueError(f"unknown masking method {method!r}; use one of {METHODS}")
    if refine and quality is None and noise is None:
        raise ValueError("refine=True needs a phase-quality map (quality) or a field noise map (noise)")
    if refine and noise is not None and noise_threshold is None:
        noise = np.asarray(_check_map(noise, "noise", filled.shape), dtype=np.float32)
        noise_threshold = _noise_threshold(noise, filled, noise_factor)
    if not grow_mm >= 0:
        raise ValueError(f"grow_mm must be >= 0, got {grow_mm!r}")
    grow = float(grow_mm) if refine and quality is not None else 0.0
    tight, grown = filled, 0
    if refine or erode_mm:
        tight = refine_mask(filled, vs, quality=quality if refine else None, noise=noise if refine else None,
                            quality_threshold=quality_threshold, noise_threshold=noise_threshold,
                            noise_factor=noise_factor, grow_mm=grow, grow_quality_threshold=grow_quality_threshold,
                            erode_mm=erode_mm)
        grown = int((tight & ~filled).sum())
    info = {"method": method, "method_used": used, **{k: jsonable(v) for k, v in method_info.items()},
            "erode_mm": float(erode_mm), "refine": bool(refine), "grow_mm": grow, "grown_voxels": grown,
            "tight_voxels": int(tight.sum()), "filled_voxels": int(filled.sum()), "fov_voxels": int(np.size(filled)),
            "coverage": {k: jsonable(v) for k, v in coverage.items()}}
    if fallback:
        info["fallback"] = fallback
    if refine and quality is not None:
        info["quality_threshold"] = float(quality_threshold)
        if grow:
            info["grow_quality_threshold"] = float(grow_quality_threshold)
    if refine and noise is not None:
        info["noise_threshold"] = float(noise_threshold)
    return tight, filled, info


def default_parameters(method):
    """The options :func:`brain_mask` records for ``method``, with their defaults from the signatures.

    ``refine``, ``erode_mm`` and ``grow_mm`` come from :func:`brain_mask`'s signature, the method's own
    options from its function's: :func:`threshold_mask` (``threshold``, ``fill_holes``,
    ``open_mm``), :func:`bet_mask` (``f``, ``g``); ``"none"`` has none.  The
    :func:`bet_surface` options that :func:`bet_mask` passes through are left out: they are
    recorded only when given, and ``vertical`` is taken from the image's orientation when
    it is not (:class:`qsmprep.interfaces.masking.BrainMask`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown masking method {method!r}; use one of {METHODS}")
    own = keyword_defaults(brain_mask)
    defaults = {"refine": own["refine"], "erode_mm": own["erode_mm"], "grow_mm": own["grow_mm"]}
    func = _METHOD_FUNCTIONS[method]
    if func is not None:
        defaults.update(keyword_defaults(func, exclude=("return_info",)))
    return defaults

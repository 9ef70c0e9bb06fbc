"""Input checks shared by the background removal methods.

Field, mask and voxel size (:func:`_check_inputs`), scalar options (:func:`_number`),
padding (:func:`_pad_voxels`), data weights (:func:`_check_weights`), the grid of the
single-radius SMV methods (:func:`_smv_domain`) and the preconditioned conjugate
gradients of LBV, iSMV and RESHARP (:func:`_pcg`).
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm import kernels


def _check_inputs(field, mask, voxel_size):
    field = np.asarray(field)
    if field.ndim != 3:
        raise ValueError(f"field must be 3D, got shape {field.shape}")
    mask = np.asarray(mask)
    if mask.shape != field.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the field's {field.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("mask is empty")
    vs = tuple(float(v) for v in np.ravel(voxel_size))
    if len(vs) != 3 or not np.all(np.isfinite(vs)) or min(vs) <= 0:
        raise ValueError(f"voxel_size must be 3 positive numbers, got {voxel_size!r}")
    if not np.all(np.isfinite(field[mask])):
        raise ValueError("field has non-finite values inside the mask")
    return np.where(mask, field, 0).astype(np.float32), mask, vs


def _number(name, value, *, integer=False, low=None, high=None, low_open=False, high_open=False):
    """Validate a scalar option; raise ValueError naming it."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or (integer and v != int(v)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '≥'} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '≤'} {high}, got {value!r}")
    return int(v) if integer else v


def _smv_domain(mask, voxel_size, radius_mm):
    """Checks and grid of the single-radius SMV methods (iSMV, RESHARP).

    Returns ``(radius, eroded, box, shape)``: the radius (mm, at least one voxel), the mask
    eroded by it (:func:`qsmprep.qsm.background.vsharp.smv_valid_masks`), the mask's
    bounding box and the FFT grid: the box padded by the radius plus one voxel, so that
    no ball around an eroded voxel wraps around and the eroded mask has a zero margin.
    """
    from qsmprep.qsm.background.vsharp import smv_valid_masks  # vsharp imports this module

    r = _number("radius_mm", radius_mm, low=0, low_open=True)
    if r < min(voxel_size):
        raise ValueError(f"radius_mm must be at least one voxel ({min(voxel_size)} mm), got {radius_mm!r}")
    eroded = smv_valid_masks(mask, voxel_size, [r])[0]
    if not eroded.any():
        raise ValueError(f"the mask has no voxel farther than radius_mm={r} mm from its edge")
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    shape = kernels.padded_shape(mask[box].shape, [int(np.ceil(r / v)) + 1 for v in voxel_size])
    return r, eroded, box, shape


def _pad_voxels(pad):
    """``pad`` (int or 3 ints, voxels per side) as a tuple of 3 non-negative ints."""
    arr = np.broadcast_to(np.asarray(pad), (3,)) if np.ndim(pad) == 0 else np.asarray(pad)
    if arr.shape != (3,):
        raise ValueError(f"pad must be an int or 3 ints, got {pad!r}")
    return tuple(_number("pad", p, integer=True, low=0) for p in arr)


def _check_weights(weights, mask):
    if weights is None:
        return mask.astype(np.float32)
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != mask.shape:
        raise ValueError(f"weights shape {w.shape} does not match the mask's {mask.shape}")
    if not np.all(np.isfinite(w[mask])) or np.any(w[mask] < 0):
        raise ValueError("weights must be finite and non-negative inside the mask")
    if not np.any(w[mask] > 0):
        raise ValueError("weights are zero everywhere inside the mask")
    return np.where(mask, w, 0).astype(np.float32)


def _pcg(apply_a, b, precondition, *, tol, max_iter):
    """Preconditioned conjugate gradients from zero, for LBV, iSMV and RESHARP.

    Stops when the (recursively updated) relative residual ``‖r‖/‖b‖`` is at most ``tol``,
    without preconditioning the last residual, or after ``max_iter`` iterations.  Returns
    ``(x, iterations, relative residual)``.
    """
    x = np.zeros_like(b)
    r = b.copy()
    bnorm = float(np.linalg.norm(b))
    if bnorm == 0:
        return x, 0, 0.0
    z = precondition(r)
    p = z.copy()
    rz = float(np.vdot(r, z))
    it = 0
    rel = float(np.linalg.norm(r)) / bnorm
    while it < max_iter and rel > tol:
        q = apply_a(p)
        pq = float(np.vdot(p, q))
        if pq <= 0:
            break
        alpha = np.float32(rz / pq)
        x += alpha * p
        r -= alpha * q
        it += 1
        rel = float(np.linalg.norm(r)) / bnorm
        if rel <= tol:
            break
        z = precondition(r)
        rz_new = float(np.vdot(r, z))
        p *= np.float32(rz_new / rz)
        p += z
        rz = rz_new
    return x, it, rel

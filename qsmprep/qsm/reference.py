"""Referencing χ: which region has mean zero."""

from __future__ import annotations

import numpy as np


def reference_chi(chi, mask, *, method="whole-brain", roi=None, r2star=None, voxel_size=None):
    """Shift χ so that its reference region has mean zero; returns (χ, info)."""
    chi = np.asarray(chi, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if method == "none":
        region = None
    elif method == "whole-brain":
        region = mask
    elif method == "roi":
        if roi is None:
            raise ValueError("reference 'roi' needs a reference ROI mask")
        region = np.asarray(roi, dtype=bool) & mask
    else:
        raise ValueError(f"unknown reference {method!r}")
    if region is not None and not region.any():
        raise ValueError(f"the {method} reference region is empty")
    offset = float(chi[region].mean()) if region is not None else 0.0
    info = {"ReferenceRegion": method, "ReferenceOffset": offset,
            "ReferenceVoxels": int(region.sum()) if region is not None else 0}
    return ((chi - offset) * mask).astype(np.float32), info

"""Compare a χ map with phantom ground truth (used by ``qsmprep demo``, tests, benchmarks)."""

from __future__ import annotations

import numpy as np


def roi_means(chi, labels, mask, label_values):
    """Mean of ``chi`` inside each label ∩ mask (NaN where a label has no voxel in the mask)."""
    out = []
    for lab in label_values:
        sel = (labels == lab) & mask
        out.append(float(chi[sel].mean()) if sel.any() else float("nan"))
    return np.array(out)


def compare_roi_means(chi, chi_true, labels, mask, label_values, *, reference=None):
    """Deep-grey ROI means of a measured χ against the truth, both referenced alike.

    χ is relative, so both maps are shifted to zero mean over ``reference`` (default
    ``mask``, the voxels where the measured χ is defined: the whole-brain reference; e.g.
    the lateral ventricles for a CSF reference; only its voxels inside ``mask`` count)
    before the ROI means are taken.

    Returns
    -------
    dict
        ``measured``, ``truth`` and ``error`` (arrays, ppm, one per label), ``r``
        (Pearson correlation), ``slope``/``intercept`` (least squares of measured on truth),
        ``mean_abs_error`` and ``rmse`` (ppm), and ``nrmse`` of the voxel-wise χ inside the
        mask (RMS of the difference over RMS of the truth).
    """
    mask = np.asarray(mask, dtype=bool)
    ref = mask if reference is None else np.asarray(reference, dtype=bool) & mask
    if not ref.any():
        raise ValueError("the reference region has no voxel inside the mask")
    chi = np.asarray(chi, dtype=np.float64) - chi[ref].mean()
    truth = np.asarray(chi_true, dtype=np.float64) - chi_true[ref].mean()
    measured = roi_means(chi, labels, mask, label_values)
    expected = roi_means(truth, labels, mask, label_values)
    ok = np.isfinite(measured) & np.isfinite(expected)
    m, t = measured[ok], expected[ok]
    slope, intercept = np.polyfit(t, m, 1) if ok.sum() >= 2 else (float("nan"), float("nan"))
    err = measured - expected
    return {
        "labels": list(label_values),
        "measured": measured,
        "truth": expected,
        "error": err,
        "r": float(np.corrcoef(t, m)[0, 1]) if ok.sum() >= 2 else float("nan"),
        "slope": float(slope),
        "intercept": float(intercept),
        "mean_abs_error": float(np.abs(err[ok]).mean()),
        "rmse": float(np.sqrt((err[ok] ** 2).mean())),
        "nrmse": float(np.sqrt(((chi - truth)[mask] ** 2).mean() / (truth[mask] ** 2).mean())),
    }


def format_comparison(result, names):
    """A plain-text table of :func:`compare_roi_means` for the console."""
    lines = [f"{'ROI':<28}{'truth':>9}{'measured':>10}{'error':>9}  (ppm)"]
    for lab, t, m, e in zip(result["labels"], result["truth"], result["measured"], result["error"]):
        lines.append(f"{names.get(lab, str(lab)):<28}{t:9.4f}{m:10.4f}{e:+9.4f}")
    lines.append(
        f"r = {result['r']:.3f}, slope = {result['slope']:.3f}, mean |error| = "
        f"{result['mean_abs_error']:.4f} ppm, voxel NRMSE = {result['nrmse']:.3f}"
    )
    return "\n".join(lines)

"""Phantom calibration: χ per tube of known concentration, a linear fit, a per-site factor.

Multi-site QSM studies scan a phantom of tubes with known concentrations of a paramagnetic or
diamagnetic agent (gadolinium, iron, calcium) at every site; χ per tube against concentration
is a straight line whose slope is the agent's molar susceptibility as that site's pipeline
measures it (gadolinium: about 0.33 ppm/mM in SI units, Curie's law for Gd³⁺ with
μ_eff = 7.94 μ_B: μ0 N_A μ_eff² μ_B² / 3kT = 0.338 ppm/mM at 20 °C, 0.319 at 37 °C).  The ratio of the known slope to a site's slope is that site's
calibration factor, applied to its cohort's χ at the group level.

``tubes.tsv`` (BIDS-style TSV): one row per tube with ``tube`` (a name),
``concentration`` (a number; ``concentration_units``, default mM) and either ``mask`` (a
NIfTI mask file, relative to the TSV) or ``label`` (an integer in the label map named by a
``label_map`` column, or by the ``label_map`` argument).  Masks and label maps are brought
onto the χ grid through the images' world coordinates (nearest neighbour; the phantom's
masks are drawn on its own scan) and eroded by ``erode_voxels`` against partial volume at
the tube walls.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from qsmprep.errors import InputError


def read_tubes(path, label_map=None):
    """Rows of ``tubes.tsv``: ``[{"tube", "concentration", "units", "mask" | ("label", "label_map")}]``."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.open(newline=""), delimiter="\t"))
    except OSError as exc:
        raise InputError(f"cannot read the tube table: {exc.strerror}", path=path) from None
    if not rows:
        raise InputError("the tube table has no rows", path=path)
    cols = set(rows[0])
    if not {"tube", "concentration"} <= cols or not ({"mask"} & cols or {"label"} & cols):
        raise InputError("the tube table needs columns tube, concentration and mask or label (tab-separated)",
                         path=path)
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            conc = float(row["concentration"])
        except (TypeError, ValueError):
            raise InputError(f"line {i}: concentration {row.get('concentration')!r} is not a number", path=path) from None
        entry = {"tube": row["tube"].strip(), "concentration": conc,
                 "units": (row.get("concentration_units") or "mM").strip()}
        if row.get("mask"):
            entry["mask"] = str((path.parent / row["mask"].strip()).resolve())
        else:
            lm = row.get("label_map") or label_map
            if not lm:
                raise InputError(f"line {i}: tube {entry['tube']!r} has a label but no label_map", path=path)
            try:
                entry["label"] = int(row["label"])
            except (TypeError, ValueError):
                raise InputError(f"line {i}: label {row.get('label')!r} is not an integer", path=path) from None
            entry["label_map"] = str((path.parent / str(lm).strip()).resolve())
        for key in ("mask", "label_map"):
            if key in entry and not Path(entry[key]).is_file():
                raise InputError(f"line {i}: {key} file does not exist", path=entry[key])
        out.append(entry)
    if len({e["concentration"] for e in out}) < 2:
        raise InputError("the tube table needs at least two different concentrations for a fit", path=path)
    if len({e["units"] for e in out}) > 1:
        raise InputError("the tubes' concentration_units differ; give all in one unit", path=path)
    return out


def tube_masks(tubes, chi_img, *, erode_voxels=1):
    """``{tube: bool mask on chi_img's grid}`` (world-coordinate nearest neighbour, then eroded)."""
    import nibabel as nib
    from scipy import ndimage

    from qsmprep.anat.transforms import resample_to

    cache, out = {}, {}
    for t in tubes:
        src = t.get("mask") or t["label_map"]
        if src not in cache:
            cache[src] = np.rint(resample_to(nib.load(src), chi_img, order=0)).astype(np.int64)
        data = cache[src]
        m = data > 0 if "mask" in t else data == t["label"]
        if erode_voxels:
            eroded = ndimage.binary_erosion(m, iterations=int(erode_voxels))
            m = eroded if eroded.any() else m
        out[t["tube"]] = m
    return out


def linear_fit(x, y, *, confidence=0.95):
    """Least-squares line ``y = slope x + intercept`` with R² and t-based confidence intervals.

    Returns ``{"n", "slope", "intercept", "r2", "slope_ci", "intercept_ci", "residual_sd"}``
    (intervals ``[lo, hi]`` at ``confidence``, NaN for fewer than 3 points).
    """
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    if n < 2 or np.ptp(x) == 0:
        raise ValueError("a linear fit needs at least two distinct concentrations")
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    resid = y - (slope * x + intercept)
    sst = float(((y - ym) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / sst if sst > 0 else math.nan
    out = {"n": int(n), "slope": slope, "intercept": intercept, "r2": r2,
           "slope_ci": [math.nan, math.nan], "intercept_ci": [math.nan, math.nan], "residual_sd": math.nan}
    if n >= 3:
        s = math.sqrt(float((resid ** 2).sum()) / (n - 2))
        q = float(stats.t.ppf(0.5 + confidence / 2.0, n - 2))
        se_slope = s / math.sqrt(sxx)
        se_int = s * math.sqrt(1.0 / n + xm * xm / sxx)
        out.update(slope_ci=[slope - q * se_slope, slope + q * se_slope],
                   intercept_ci=[intercept - q * se_int, intercept + q * se_int], residual_sd=s)
    return out


def calibration_factor(measured_slope, reference_slope):
    """The factor that maps a site's χ onto the reference scale: ``reference / measured``."""
    if not measured_slope or not math.isfinite(measured_slope):
        raise ValueError(f"cannot calibrate with a measured slope of {measured_slope}")
    return float(reference_slope) / float(measured_slope)


# --- the cohort side: per-site factors applied at the group level -------------------------------

#: ROI-table statistics that scale with χ (rows of the ``chi`` map only: R2*, T2* and the
#: χ-separation maps are not what a tube phantom's QSM slope measures)
CALIBRATED_ROI_STATS = ("mean", "median", "std", "iqr", "p5", "p95", "mass")
#: lesion-table columns that scale with χ (``rim_candidate`` keeps the participant level's call)
CALIBRATED_LESION_COLUMNS = ("chi_mean", "chi_median", "chi_std", "chi_ref_mean", "chi_ref_median", "chi_ref_std",
                             "chi_relative", "rim_chi_mean", "core_chi_mean", "rim_minus_core")


def read_site_factors(path):
    """``{site: factor}`` from a TSV with columns ``site`` and ``calibration_factor``.

    The factor is a site's ``reference slope / measured slope`` (``qsmprep calibrate
    --reference-slope``); sites are matched to the scans' ``site`` as the group level reads it
    (``sessions.tsv``, ``participants.tsv``, else the GRE sidecar's ``InstitutionName``).
    """
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.open(newline=""), delimiter="\t"))
    except OSError as exc:
        raise InputError(f"cannot read the calibration table: {exc.strerror}", path=path) from None
    if not rows or not {"site", "calibration_factor"} <= set(rows[0]):
        raise InputError("the calibration table needs rows and the tab-separated columns site and "
                         "calibration_factor", path=path)
    out = {}
    for i, row in enumerate(rows, start=2):
        site = (row["site"] or "").strip()
        try:
            factor = float(row["calibration_factor"])
        except (TypeError, ValueError):
            factor = math.nan
        if not site or not math.isfinite(factor) or factor <= 0:
            raise InputError(f"line {i}: need a site name and a positive calibration_factor, got "
                             f"{row['site']!r}, {row['calibration_factor']!r}", path=path)
        if site in out:
            raise InputError(f"line {i}: site {site!r} is listed twice", path=path)
        out[site] = factor
    return out


def scan_factors(scan_sites, site_factors, path=None):
    """``{scan: factor}`` for ``{scan: site}``; a scan whose site has no factor is refused (a
    cohort half calibrated would be compared with itself on two scales)."""
    missing = sorted({str(site) for site in scan_sites.values() if str(site) not in site_factors})
    if missing:
        raise InputError(f"no calibration_factor for site(s) {', '.join(missing)} (scans' sites come from "
                         f"sessions.tsv / participants.tsv 'site', else InstitutionName); the table has "
                         f"{', '.join(sorted(site_factors))}", path=path)
    return {scan: site_factors[str(site)] for scan, site in scan_sites.items()}


def calibrate_table(df, factors, columns, *, rows=None):
    """A copy of ``df`` with ``columns`` multiplied by its scan's factor (``factors``: ``{scan:
    factor}``, matched on the ``scan`` column) where ``rows`` (a boolean Series, default all) is
    true, and a ``calibration_factor`` column (NaN on rows left as they were)."""
    out = df.copy()
    sel = np.ones(len(out), bool) if rows is None else np.asarray(rows, bool)
    factor = out["scan"].map(factors).astype(float).to_numpy()
    factor = np.where(sel, factor, np.nan)
    for col in columns:
        if col in out:
            vals = out[col].astype(float).to_numpy()
            out[col] = np.where(sel, vals * factor, vals)
    out["calibration_factor"] = factor
    return out

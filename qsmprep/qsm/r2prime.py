"""R2′ = R2* − R2 for χ-separation (:mod:`qsmprep.qsm.chisep`): from a measured R2 (or T2) map,
or the GRE-only approximation with one brain-wide R2.
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm.inversion._operators import _check_positive

#: The GRE-only approximation's brain-wide R2 (1/s): the mean of the 3 T grey-matter (T2
#: 99 ms) and white-matter (T2 69 ms) relaxation times of Stanisz et al., MRM 2005;54:507.
R2_BRAIN_3T = 0.5 * (1 / 0.099 + 1 / 0.069)


def _finite_in_mask(name, x, mask):
    x = np.asarray(x, dtype=np.float32)
    if x.shape != mask.shape:
        raise ValueError(f"{name} shape {x.shape} does not match the mask's {mask.shape}")
    bad = mask & ~np.isfinite(x)
    return np.where(bad, 0, x).astype(np.float32), int(bad.sum())


#: Largest fraction of the brain mask an R2 map may leave without a value (≤ 0, not finite:
#: outside its field of view after registration) before it is refused.
MAX_R2_MISSING = 0.05
#: Median R2 (1/s) in the brain outside which a map cannot be an R2 map in 1/s (brain R2 is
#: about 5-30 1/s at 1.5-7 T; a T2 map in s reads ~0.08, R2 in 1/ms ~0.01).
R2_MEDIAN_RANGE = (1.0, 100.0)


def r2prime_from_r2(r2star, r2, mask, *, fill_r2=R2_BRAIN_3T):
    """R2′ = R2* − R2 (1/s) from a measured R2 map, zero outside ``mask``.

    An R2 map is refused (``ValueError``) when more than :data:`MAX_R2_MISSING` of the mask
    has no R2 (≤ 0 or not finite: the map does not cover the GRE's brain) or when its
    median in the mask lies outside :data:`R2_MEDIAN_RANGE` (not R2 in 1/s).  The few
    voxels without R2 that remain take the GRE-only ``fill_r2`` (:func:`r2prime_gre_only`),
    counted in the info.  Negative differences (noise, or R2 and R2* from slightly
    different voxels) are set to 0 (R2′ ≥ 0 physically); their fraction is returned so a
    misregistered or mis-scaled map shows.  Returns ``(r2prime, info)``.
    """
    mask = np.asarray(mask, dtype=bool)
    r2s, bad1 = _finite_in_mask("r2star", r2star, mask)
    r2 = np.asarray(r2, dtype=np.float32)
    if r2.shape != mask.shape:
        raise ValueError(f"r2 shape {r2.shape} does not match the mask's {mask.shape}")
    n = max(int(mask.sum()), 1)
    missing = mask & ~(np.isfinite(r2) & (r2 > 0))
    missing_frac = float(missing.sum()) / n
    if missing_frac > MAX_R2_MISSING:
        raise ValueError(f"the R2 map has no value (<= 0 or not finite) in {missing_frac:.1%} of the brain mask: "
                         "it does not cover the GRE's brain (field of view, registration)")
    present = mask & ~missing
    median = float(np.median(r2[present])) if present.any() else float("nan")
    lo, hi = R2_MEDIAN_RANGE
    if not lo <= median <= hi:
        raise ValueError(f"the R2 map's median in the brain is {median:.4g}: not R2 in 1/s (expected "
                         f"{lo:g}-{hi:g}; a T2 map? name it _T2map, in s)")
    r2 = np.where(missing, np.float32(fill_r2), np.where(mask, r2, 0)).astype(np.float32)
    diff = (r2s - r2) * mask
    neg = mask & (diff < 0)
    info = {"R2primeSource": "R2* - R2 (measured R2 map)", "R2primeNegativeFraction": round(neg.sum() / n, 4),
            "R2primeNonFiniteVoxels": bad1, "R2MapMissingFraction": round(missing_frac, 4),
            "R2MissingFilledWith": float(fill_r2), "R2MedianInMask": round(median, 3)}
    return np.maximum(diff, 0).astype(np.float32), info


def r2_from_t2(t2, mask):
    """R2 = 1/T2 (1/s) from a T2 map in seconds (BIDS ``T2map``), zero where T2 ≤ 0.

    A map whose median T2 in the mask exceeds 1 s cannot be brain T2 in seconds (brain
    tissue is 0.05-0.15 s at 3 T, CSF about 2 s): it is refused as probably milliseconds
    rather than rescaled, since BIDS fixes T2map's unit.
    """
    mask = np.asarray(mask, dtype=bool)
    t2 = np.asarray(t2, dtype=np.float32)
    good = mask & np.isfinite(t2) & (t2 > 0)
    if not good.any():
        raise ValueError("the T2 map has no positive value inside the mask")
    med = float(np.median(t2[good]))
    if med > 1.0:
        raise ValueError(f"the T2 map's median in the brain is {med:.4g}: not seconds (BIDS T2map is in s; "
                         "milliseconds?); convert it to seconds")
    out = np.zeros(t2.shape, np.float32)
    out[good] = 1.0 / t2[good]
    return out


def r2prime_gre_only(r2star, mask, *, r2=R2_BRAIN_3T):
    """The GRE-only approximation R2′ ≈ R2* − R2₀ (1/s), zero outside ``mask``.

    Without an R2 measurement, R2 is taken as one brain-wide value ``r2`` (default
    :data:`R2_BRAIN_3T`, 12.3 1/s, the mean of Stanisz et al. 2005's 3 T grey- and
    white-matter R2).  The assumption is that R2 varies across brain tissue much less than
    R2′ does (R2*-based χ-separation, e.g. Dimov et al., Tomography 2022;8:1544; compared
    with R2′-based χ-separation in multiple sclerosis by Ji et al., NMR Biomed 2024).

    Its error: where the true R2 is ``R2₀ + δ``, R2′ is off by ``δ``, and χ⁺ and |χ⁻| are
    each off by about ``δ / (2 D_r)`` (0.0036 ppm per 1/s at 3 T).  Tissue whose R2 is far
    from the brain's (CSF: R2 ≈ 2-4 1/s; calcification and haemorrhage, whose R2 is high)
    is biased most: a calcification's high R2 reads as R2′ and puts a spurious χ⁺ in it.
    Negative values are set to 0.  Returns ``(r2prime, info)``.
    """
    mask = np.asarray(mask, dtype=bool)
    r2 = _check_positive("r2", r2, allow_zero=True)
    r2s, bad = _finite_in_mask("r2star", r2star, mask)
    diff = (r2s - np.float32(r2)) * mask
    n = max(int(mask.sum()), 1)
    info = {"R2primeSource": "GRE only: R2* - R2_0 with one brain-wide R2_0 (R2 assumed uniform)",
            "R2primeAssumedR2": round(float(r2), 4),
            "R2primeNegativeFraction": round(float((mask & (diff < 0)).sum()) / n, 4),
            "R2primeNonFiniteVoxels": bad}
    return np.maximum(diff, 0).astype(np.float32), info

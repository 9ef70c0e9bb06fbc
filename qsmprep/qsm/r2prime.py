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


def r2prime_from_r2(r2star, r2, mask):
    """R2′ = R2* − R2 (1/s) from a measured R2 map, zero outside ``mask``.

    Negative differences (noise, or R2 and R2* from slightly different voxels) are set to
    0 (R2′ ≥ 0 physically); the fraction set is returned so QC can flag a misregistered or
    mis-scaled R2 map.  Returns ``(r2prime, info)``.
    """
    mask = np.asarray(mask, dtype=bool)
    r2s, bad1 = _finite_in_mask("r2star", r2star, mask)
    r2, bad2 = _finite_in_mask("r2", r2, mask)
    diff = (r2s - r2) * mask
    neg = mask & (diff < 0)
    n = max(int(mask.sum()), 1)
    info = {"R2primeSource": "R2* - R2 (measured R2 map)", "R2primeNegativeFraction": round(neg.sum() / n, 4),
            "R2primeNonFiniteVoxels": bad1 + bad2,
            "R2MedianInMask": round(float(np.median(r2[mask])), 3) if mask.any() else None}
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

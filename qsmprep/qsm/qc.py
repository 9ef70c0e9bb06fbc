"""Quality-control metrics of one GRE acquisition, each with a documented pass/warn rule.

The metrics answer "can this χ map be trusted?" from the data themselves (MRIQC-style:
computed per scan, written as ``..._desc-qc_metrics.json`` beside the maps, gathered into
``group/qc.tsv``).  Every rule is in :data:`RULES` (value → status), stated in the README
section "Your data" and repeated in each metric's ``Threshold`` text, so a reader never has
to guess what "warn" means.

Statuses: ``pass``, ``warn`` (look at the maps before using the numbers), ``fail`` (the
numbers are very likely wrong), ``n/a`` (the metric cannot be computed for this scan,
e.g. a field-fit residual with fewer than three echoes).
"""

from __future__ import annotations

import numpy as np

STATUSES = ("pass", "warn", "fail", "n/a")
_ORDER = {"n/a": 0, "pass": 0, "warn": 1, "fail": 2}

#: metric -> (units, description, threshold text).  The rules themselves are in :func:`rate`.
RULES = {
    "phase_units": (None, "phase units used to scale the phase to radians",
                    "warn when chosen by 'rescale' (units guessed from the value range)"),
    "phase_raw_range": (None, "minimum and maximum of the raw phase values over all echoes", "informational"),
    "mask_source": (None, "where the brain mask came from (method, user mask, partial-coverage fallback)",
                    "warn when a partial-coverage fallback was taken"),
    "partial_coverage": (None, "the field of view holds only part of the head (no background, or tissue on "
                         "the field-of-view faces)", "warn when true"),
    "mask_volume_ml": ("mL", "volume of the brain mask (filled)",
                       "warn < 800 or > 2000 mL (an adult human brain with its CSF is 1100-1700 mL)"),
    "mask_fraction_fov": (None, "brain-mask volume / field-of-view volume", "warn < 0.05 or > 0.90; fail < 0.01"),
    "mask_refinement_removed_fraction": (None, "fraction of the filled mask removed by the phase-quality "
                                         "refinement (not used for χ)", "warn > 0.20; fail > 0.50"),
    "mask_growth_added_fraction": (None, "voxels the phase-quality refinement added outside the filled mask "
                                   "(reliable phase within grow_mm of it: surface veins and sinuses), as a "
                                   "fraction of the filled mask", "warn > 0.05"),
    "field_residual_over_noise": (None, "median over the mask of the RMS residual of the echo fit over the "
                                  "phase noise expected from the magnitude noise (1 = as good as the noise "
                                  "allows)", "warn > 2, fail > 5 (Laplacian unwrapping: warn > 4, fail > 10); "
                                  "n/a with < 3 echoes or no background"),
    "phase_jump_fraction": (None, "fraction of mask voxels with a jump of more than π to a neighbour in the "
                            "unwrapped phase of any echo (an unwrapping error)", "warn > 0.01; fail > 0.05"),
    "chi_p01": ("ppm", "1st percentile of χ in the mask", "warn < -1 ppm"),
    "chi_p99": ("ppm", "99th percentile of χ in the mask", "warn > 1 ppm"),
    "chi_range_ppm": ("ppm", "99th minus 1st percentile of χ in the mask (brain: about 0.1-0.4 ppm)",
                      "warn < 0.02 ppm (a nearly flat map: wrong phase units or echo times?) or > 2 ppm"),
    "reference_offset_ppm": ("ppm", "mean χ of the reference region subtracted from the map",
                             "warn when |offset| > 0.2 ppm"),
    "lambda_rule": (None, "how the inversion's regularisation weight λ was chosen (fixed, discrepancy, lcurve)",
                    "warn when the discrepancy principle could not reach the noise level and λ fell back to "
                    "the fixed value"),
    "registration_similarity": (None, "normalised mutual information (Studholme 1999) of the registered GRE "
                                "echo average and the T1w in the T1w brain mask; checked against the same "
                                "measure after ±3 mm shifts", "warn when a shift increases it (not at its "
                                "maximum) or it is < 1.02 (almost no shared structure)"),
}


def rate(name, value, **context):
    """``(status, message)`` of one metric value under its rule in :data:`RULES`."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a", context.get("why", "")
    if name == "phase_units":
        if value == "rescale":
            return "warn", ("the phase units were not recognised; the values were mapped linearly onto "
                            "[-π, π) ('rescale'); state the units with --phase-units if you know them")
        return "pass", ""
    if name == "mask_source":
        fallback = context.get("fallback")
        return ("warn", fallback) if fallback else ("pass", "")
    if name == "lambda_rule":
        fallback = context.get("fallback")
        return ("warn", f"lambda_rule {value!r} fell back: {fallback}") if fallback else ("pass", "")
    if name == "partial_coverage":
        return ("warn", "partial coverage: " + context.get("reason", "")) if value else ("pass", "")
    if name == "mask_volume_ml":
        if value < 800 or value > 2000:
            return "warn", (f"the brain mask is {value:.0f} mL (expected 800-2000 mL for a whole adult brain); "
                            "check the mask")
        return "pass", ""
    if name == "mask_fraction_fov":
        if value < 0.01:
            return "fail", f"the brain mask is {100 * value:.1f} % of the field of view (< 1 %): χ is empty"
        if value < 0.05 or value > 0.90:
            return "warn", (f"the brain mask is {100 * value:.1f} % of the field of view (pass 5-90 %); check "
                            "the mask (or give one with --mask / --derivatives)")
        return "pass", ""
    if name == "mask_refinement_removed_fraction":
        return _upper(value, 0.2, 0.5, f"the phase-quality refinement removed {100 * value:.0f} % of the mask",
                      "(> 20 %): the phase is unreliable in large parts of the brain", "(> 50 %)")
    if name == "mask_growth_added_fraction":
        # the growth is meant for the surface veins and sinuses: 0.1 % (demo) and 0.4-0.5 % (MNI
        # head) of the mask; a whole 3 mm shell of an adult brain is about 13 % of it, so above
        # 5 % the growth has followed reliable phase that is not vessel (scalp through a thin
        # skull, or a magnitude mask far inside the brain)
        return _upper(value, 0.05, np.inf, f"the phase-quality refinement added {100 * value:.1f} % of the mask "
                      "outside it", "(> 5 %; veins and sinuses add well under 1 %): check that χ does not extend "
                      "into the skull or scalp, or lower grow_mm", "")
    if name == "field_residual_over_noise":
        # Laplacian unwrapping is exact only up to a smooth function per echo, which the
        # residual sees (1.5 on the 1 mm demo, 2.2 on the 3 mm demo; ROMEO 0.9 and 0.8)
        warn, fail = (4, 10) if context.get("unwrapping") == "laplacian" else (2, 5)
        return _upper(value, warn, fail, f"the echo fit residual is {value:.1f} × the noise",
                      f"(> {warn}): check the echo times, echo order and unwrapping",
                      f"(> {fail}): the phase does not evolve linearly with TE (echo times, echo order or "
                      "unwrapping wrong?)")
    if name == "phase_jump_fraction":
        return _upper(value, 0.01, 0.05, f"{100 * value:.1f} % of the mask has phase jumps > π after unwrapping",
                      "(> 1 %)", "(> 5 %)")
    if name == "chi_p01":
        return ("warn", f"χ 1st percentile {value:.3f} ppm (< -1 ppm)") if value < -1 else ("pass", "")
    if name == "chi_p99":
        return ("warn", f"χ 99th percentile {value:.3f} ppm (> 1 ppm)") if value > 1 else ("pass", "")
    if name == "chi_range_ppm":
        if value < 0.02:
            return "warn", (f"χ is nearly flat (1st-99th percentile range {value:.4f} ppm < 0.02 ppm): wrong "
                            "phase units, echo times or field strength?")
        if value > 2:
            return "warn", f"χ 1st-99th percentile range {value:.2f} ppm (> 2 ppm): phase scaling wrong?"
        return "pass", ""
    if name == "reference_offset_ppm":
        if abs(value) > 0.2:
            return "warn", f"the reference offset is {value:.3f} ppm (|offset| > 0.2 ppm)"
        return "pass", ""
    if name == "registration_similarity":
        better = context.get("better_shift")
        if better:
            return "warn", (f"the GRE→T1w registration is not at its similarity maximum (a {better} shift "
                            "matches better): check the registration figure")
        if value < 1.02:
            return "warn", f"the registered GRE and T1w share almost no structure (NMI {value:.3f} < 1.02)"
        return "pass", ""
    if name == "phase_raw_range":
        return "pass", ""
    raise ValueError(f"unknown QC metric {name!r}")


def _upper(value, warn, fail, what, warn_why, fail_why):
    """``(status, message)`` for a metric that must stay below ``warn`` (and ``fail``)."""
    if value > fail:
        return "fail", f"{what} {fail_why}"
    if value > warn:
        return "warn", f"{what} {warn_why}"
    return "pass", ""


def metric(name, value, **context):
    """One metric entry of the QC JSON: value, units, status, threshold, description, message."""
    units, description, threshold = RULES[name]
    status, message = rate(name, value, **context)
    return {"Value": value, "Units": units, "Status": status, "Threshold": threshold,
            "Description": description, "Message": message}


def summarise(metrics):
    """``{"Status", "Warnings", "Metrics"}``: the worst status and one sentence per warning."""
    worst = max((m["Status"] for m in metrics.values()), key=lambda s: _ORDER[s], default="pass")
    warnings = [f"{name}: {m['Message']}" for name, m in metrics.items() if m["Status"] in ("warn", "fail")]
    return {"Status": "pass" if worst == "n/a" else worst, "Warnings": warnings, "Metrics": metrics}


# --- the measurements ----------------------------------------------------------------------
def phase_jump_fraction(unwrapped, mask):
    """Fraction of mask voxels that differ by more than π from a mask neighbour in any echo.

    After a correct unwrapping of adequately sampled phase, neighbouring voxels differ by
    less than π; a remaining jump is a 2π error (or a phase too steep to sample).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    ph = np.asarray(unwrapped, dtype=np.float32)
    if ph.ndim == 3:
        ph = ph[..., None]
    flagged = np.zeros(mask.shape, dtype=bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        both = mask[lo] & mask[hi]
        jump = np.zeros(both.shape, dtype=bool)
        for e in range(ph.shape[-1]):
            vol = ph[..., e]
            jump |= np.abs(vol[hi] - vol[lo]) > np.pi
        jump &= both
        flagged[lo] |= jump
        flagged[hi] |= jump
    return float(flagged[mask].mean())


def background_noise_sigma(magnitude, mask):
    """Noise σ per complex channel from background voxels of one echo's magnitude, or None.

    Background = outside the dilated mask and below 10 % of the 99th percentile; with
    Rayleigh noise E[m²] = 2σ².  None when fewer than 1000 such voxels exist (partial
    coverage: no background to measure).
    """
    from scipy import ndimage

    mag = np.asarray(magnitude, dtype=np.float64)
    outside = ~ndimage.binary_dilation(np.asarray(mask, dtype=bool), iterations=3)
    bg = outside & (mag < 0.1 * np.percentile(mag, 99))
    if bg.sum() < 1000:
        return None
    return float(np.sqrt(np.mean(mag[bg] ** 2) / 2))


def field_residual_over_noise(unwrapped, magnitude, tes, field_rad_s, offset, mask, sigma):
    """Median over the mask of sqrt(Σ_e |S_e|² r_e² / dof) / σ (1 when the residual is noise).

    ``r_e`` is the residual of the unwrapped phase of echo e against the fitted line
    ``offset + ω·TE_e``; the phase noise of echo e is σ/|S_e| (Rician magnitude at SNR ≫ 1),
    so each |S_e|·r_e has standard deviation σ when the phase evolves linearly with TE.
    None with fewer than three echoes (no residual degree of freedom) or without σ.
    """
    tes = np.asarray(tes, dtype=np.float64)
    if tes.size < 3 or sigma is None or not sigma > 0:
        return None
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    # float32 is ample: a residual of 1e-2 rad against phases of a few hundred rad
    chi2 = np.zeros(int(mask.sum()), dtype=np.float32)
    omega = np.asarray(field_rad_s, dtype=np.float32)[mask]
    phi0 = np.asarray(offset, dtype=np.float32)[mask]
    for e, te in enumerate(tes.astype(np.float32)):
        resid = np.asarray(unwrapped[..., e], dtype=np.float32)[mask] - phi0 - omega * te
        resid *= np.asarray(magnitude[..., e], dtype=np.float32)[mask]
        chi2 += resid * resid
    return float(np.median(np.sqrt(chi2 / (tes.size - 2))) / sigma)


def normalised_mutual_information(a, b, mask, bins=32):
    """(H(A) + H(B)) / H(A, B) over ``mask`` (Studholme et al., Pattern Recognit 1999): 1 … 2."""
    mask = np.asarray(mask, dtype=bool)
    x, y = np.asarray(a, dtype=np.float64)[mask], np.asarray(b, dtype=np.float64)[mask]
    if x.size < 100:
        return None
    hist, _, _ = np.histogram2d(x, y, bins=bins)
    p = hist / hist.sum()
    px, py = p.sum(1), p.sum(0)

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    joint = entropy(p.ravel())
    return (entropy(px) + entropy(py)) / joint if joint > 0 else None


def registration_similarity(fixed, moving, mask, voxel_size, *, shift_mm=3.0):
    """NMI of the registered pair and whether a ±``shift_mm`` shift along any axis beats it.

    A registration at its optimum has the similarity at a local maximum; a shift that
    improves it means the images are misaligned by about that much or more.  Returns
    ``(nmi, better_shift)`` with ``better_shift`` e.g. ``"+3 mm along axis j"`` or None.
    """
    fixed = np.asarray(fixed, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool) & (moving > 0)
    base = normalised_mutual_information(fixed, moving, mask)
    if base is None:
        return None, None
    best, which = base, None
    for axis in range(3):
        n = max(1, int(round(shift_mm / float(voxel_size[axis]))))
        for sign in (1, -1):
            shifted = np.roll(moving, sign * n, axis=axis)
            valid = mask & (shifted > 0)
            value = normalised_mutual_information(fixed, shifted, valid)
            if value is not None and value > best + 1e-4:
                best, which = value, f"{'+' if sign > 0 else '-'}{n * float(voxel_size[axis]):g} mm along axis " \
                                     f"{'ijk'[axis]}"
    return base, which


def chi_percentiles(chi, mask):
    """(1st, 99th) percentiles of χ in the mask, or (None, None) for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None, None
    p01, p99 = np.percentile(np.asarray(chi, dtype=np.float32)[mask], [1, 99])
    return float(p01), float(p99)

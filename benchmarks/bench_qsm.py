"""Benchmark of background field removal and dipole inversion on the demo phantom.

Usage::

    python benchmarks/bench_qsm.py [--size full|small] [--workers 2] [--background vsharp,pdf,lbv,ismv,resharp]
                                   [--inversion tkd,tikhonov,ilsqr,medi,medi:solver=admm,medi+0,tv,nltv,rts,whqsm]
                                   [--chisep r2map,gre-only] [--unringing | --no-unringing]

Background removal runs on the phantom's total field with its true brain mask and is scored
against the true local field (relative RMSE and correlation inside the valid mask) and by
the fraction of the background field left when it is fed the background alone; the same
scores deeper than 20 mm from the mask's edge, and the method's floor on this phantom: its
score when fed the true local field alone (no background at all).  Inversion
runs on the true local field plus field noise of 0.001 ppm (SNR-100-like) and is scored by
the voxel NRMSE inside the brain, deep-grey ROI mean error and slope.  χ-separation runs on the
same field with R2′ from the true R2* and R2 (``r2map``) or the GRE-only R2* − R2₀ (``gre-only``),
started from MEDI's χ of that field (computed first, untimed), and is scored by the deep-grey
mean |error| of χ⁺ and χ⁻ against the phantom's truth.  Unringing (``qsmprep.qsm.unring``) runs
on that MEDI χ, all three axes, and is scored as the inversions.  Each stage runs in a
forked child (after an untimed call on a 40-voxel crop, which compiles its numba code); each
line gives its wall time, the time in FFT pairs of the padded inversion grid
(``benchmarks/_common.py``) and its peak memory (inputs plus what it allocates).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage as ndi

from _common import fft_pair_seconds, header, in_child, inversion_grid, method_spec, row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--background", default="vsharp,pdf,lbv,ismv,resharp")
    parser.add_argument("--inversion", default="tkd,tikhonov,ilsqr,medi,medi:solver=admm,medi+0,tv,nltv,rts,whqsm",
                        help="methods, each METHOD[:KEY=VALUE...] (e.g. medi:solver=admm)")
    parser.add_argument("--chisep", default="r2map,gre-only", help="chi-separation R2' sources ('' for none)")
    parser.add_argument("--unringing", action=argparse.BooleanOptionalAction, default=True,
                        help="time the unringing stage on MEDI's chi")
    opts = parser.parse_args(argv)

    from qsmprep.demo import DEEP_GREY_LABELS, make_phantom
    from qsmprep.qsm.background import remove_background
    from qsmprep.qsm.inversion import invert, uses_phase_scale

    ph = make_phantom(opts.size)
    mask = ph.brain_mask
    print(f"phantom {opts.size}: {mask.shape}, {mask.sum()} brain voxels, workers={opts.workers}")
    grid = inversion_grid(mask)
    pair = fft_pair_seconds(grid, opts.workers)
    print(header(pair, grid, opts.workers))
    crop = tuple(slice(n // 2 - 20, n // 2 + 20) for n in mask.shape)
    depth = ndi.distance_transform_edt(mask, sampling=ph.voxel_size)

    def score(local, valid):
        t = ph.local_field[valid] - ph.local_field[valid].mean()
        e = local[valid] - local[valid].mean()
        return np.sqrt(np.mean((e - t) ** 2)) / t.std(), np.corrcoef(e, t)[0, 1]

    for method in filter(None, opts.background.split(",")):
        def run_background(field=ph.total_field, sl=(slice(None),) * 3, method=method):
            return remove_background(field[sl], mask[sl], ph.voxel_size, method=method, b0_dir=ph.b0_dir,
                                     workers=opts.workers)

        (rel, r, deep_rel, deep_r, valid_sum), dt, peak, unit = in_child(
            run_background, lambda res: (*score(res[0], res[1]), *score(res[0], res[1] & (depth > 20)),
                                         int(res[1].sum())),
            [ph.total_field, mask], warmup=lambda: run_background(sl=crop), pair=(grid, opts.workers))
        left, v2, _ = remove_background(np.where(mask, ph.background_field, 0), mask, ph.voxel_size,
                                        method=method, b0_dir=ph.b0_dir, workers=opts.workers)
        frac = left[v2].std() / ph.background_field[v2].std()
        # the floor of the method on this phantom: fed the true local field alone (no
        # background at all), whatever it removes is the local field's part that fields of
        # sources outside the mask reproduce (the harmonic ambiguity)
        alone, v3, _ = remove_background(np.where(mask, ph.local_field, 0), mask, ph.voxel_size,
                                         method=method, b0_dir=ph.b0_dir, workers=opts.workers)
        floor_rel, floor_r = score(alone, v3)
        print(row(f"background {method}", dt, unit, peak,
                  f"rel.RMSE {rel:.3f}  r {r:.3f}  (> 20 mm deep: {deep_rel:.3f}, r {deep_r:.3f})  "
                  f"background left {100 * frac:.2f} %  valid {valid_sum / mask.sum():.3f}; fed the true "
                  f"local field alone: rel.RMSE {floor_rel:.3f}, r {floor_r:.3f}"))

    rng = np.random.default_rng(0)
    field = np.where(mask, ph.local_field + rng.normal(0, 1e-3, mask.shape).astype(np.float32), 0)
    magnitude = ph.m0 * np.exp(-ph.r2star * 0.02)
    noise = np.full(mask.shape, 1e-3, np.float32)
    truth = ph.chi - ph.chi[mask].mean()
    true_roi = np.array([truth[ph.labels == lab].mean() for lab in DEEP_GREY_LABELS])
    from qsmprep.qsm.echoes import phase_per_ppm

    def score_inversion(res):
        chi, info = res
        c = chi - chi[mask].mean()
        nrmse = np.linalg.norm((c - truth)[mask]) / np.linalg.norm(truth[mask])
        roi = np.array([c[ph.labels == lab].mean() for lab in DEEP_GREY_LABELS])
        iters = {k: v for k, v in info.items() if "iterations" in k}
        return nrmse, np.abs(roi - true_roi).mean(), np.polyfit(true_roi, roi, 1)[0], iters

    for spec in filter(None, opts.inversion.split(",")):
        method, extra = method_spec(spec)
        if uses_phase_scale(method, extra):  # the nonlinear data term: the phase of 1 ppm over the echo spacing
            extra["phase_scale"] = phase_per_ppm(ph.tes, ph.b0)  # (as the pipeline)

        def run_inversion(sl=(slice(None),) * 3, method=method, extra=extra):
            return invert(field[sl], mask[sl], ph.voxel_size, ph.b0_dir, method=method, magnitude=magnitude[sl],
                          noise=noise[sl], r2star=ph.r2star[sl], workers=opts.workers, **extra)

        (nrmse, err, slope, iters), dt, peak, unit = in_child(
            run_inversion, score_inversion, [field, mask, magnitude, noise], warmup=lambda: run_inversion(crop),
            pair=(grid, opts.workers))
        print(row(f"inversion {spec}", dt, unit, peak,
                  f"NRMSE {nrmse:.3f}  deep-grey |err| {err:.4f} ppm  slope {slope:.3f}  {iters}"))

    modes = [m for m in opts.chisep.split(",") if m]
    if modes or opts.unringing:
        chi0, _ = invert(field, mask, ph.voxel_size, ph.b0_dir, method="medi", magnitude=magnitude, noise=noise,
                         workers=opts.workers)
    if opts.unringing:
        from qsmprep.qsm.unring import unring

        def run_unring(sl=(slice(None),) * 3):
            return unring(chi0[sl], mask=mask[sl], workers=opts.workers), {}

        before = score_inversion((chi0, {}))
        (nrmse, err, slope, _), dt, peak, unit = in_child(
            run_unring, score_inversion, [chi0, mask], warmup=lambda: run_unring(crop), pair=(grid, opts.workers))
        print(row("unringing subvoxel-shift (MEDI's chi)", dt, unit, peak,
                  f"NRMSE {nrmse:.3f}  deep-grey |err| {err:.4f} ppm  slope {slope:.3f}  (before: NRMSE "
                  f"{before[0]:.3f}, |err| {before[1]:.4f}, slope {before[2]:.3f})"))
    if modes:
        from qsmprep.qsm.chisep import chi_separation
        from qsmprep.qsm.r2prime import r2prime_from_r2, r2prime_gre_only
    for mode in modes:
        r2p = (r2prime_from_r2(ph.r2star, ph.r2, mask) if mode == "r2map" else r2prime_gre_only(ph.r2star, mask))[0]

        def run_chisep(sl=(slice(None),) * 3, r2p=r2p):
            stats = {}
            out = chi_separation(field[sl], r2p[sl], mask[sl], ph.voxel_size, ph.b0_dir, ph.b0,
                                 magnitude=magnitude[sl], noise=noise[sl], chi=chi0[sl], workers=opts.workers,
                                 stats=stats)
            return out, stats

        def score_chisep(res):
            (p, n), stats = res
            errs = [np.mean([abs(x[mask & (ph.labels == lab)].mean() - t[mask & (ph.labels == lab)].mean())
                             for lab in DEEP_GREY_LABELS]) for x, t in ((p, ph.chi_para), (n, ph.chi_dia))]
            return errs, stats["iterations"], sum(stats["cg_iterations"])

        (errs, gn, cg), dt, peak, unit = in_child(
            run_chisep, score_chisep, [field, mask, magnitude, noise, r2p, chi0], warmup=lambda: run_chisep(crop),
            pair=(grid, opts.workers))
        print(row(f"chisep {mode}", dt, unit, peak,
                  f"deep-grey |err| chi+ {errs[0]:.4f} chi- {errs[1]:.4f} ppm  {gn} GN, {cg} CG"))


if __name__ == "__main__":
    main()

"""Benchmark of the field-map stages: unwrapping, echo combination and R2* on the demo phantom.

Usage::

    python benchmarks/bench_field.py [--size full|small] [--workers 2]
                                     [--stages laplacian,romeo,linear,nonlinear,loglinear,arlo]

Simulates the demo phantom's multi-echo GRE at SNR 100 and runs each stage of issue 3 on it
the way the pipeline does (unwrapping without a mask; the echo fits on ROMEO's unwrapped
phase; R2* on the magnitude).  Each stage runs in a forked child process; its printed peak
memory is its inputs plus the most it allocated on top of them (the child's resident
high-water mark above its start, numba's allocations included), i.e. what a pipeline step
holds beyond the interpreter (about 0.2 GB with numpy, scipy and numba).  Accuracy is scored against
the phantom's truth:

* unwrapping: the fraction of voxels off by a 2π multiple other than the common one, per
  echo, in brain tissue (the CSF band along the skull excluded, where intravoxel dephasing
  makes the "true" wrap count ambiguous) and in the whole true brain mask; Laplacian
  unwrapping is exact only up to a harmonic function, so its RMS phase error is given;
* echo fits: RMSE (ppm) of the field against the true total field, its constant removed, in
  the pipeline's quality-refined brain mask, in brain tissue and in the whole true brain mask;
* R2*: the median relative error in brain tissue (labels GM, WM and deep grey).

Numbers depend on the machine and its load: report them with the core count.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from _common import fft_pair_seconds, header, in_child, inversion_grid, row


def wrong_fraction(unwrapped, truth, mask):
    """Fraction of voxels off by a 2π multiple other than the region's most common one."""
    k = np.round((unwrapped - truth) / (2 * np.pi)).astype(int)[mask]
    _, counts = np.unique(k, return_counts=True)
    return 1.0 - counts.max() / k.size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stages", default="laplacian,romeo,linear,nonlinear,loglinear,arlo")
    opts = parser.parse_args(argv)
    stages = set(filter(None, opts.stages.split(",")))

    from qsmprep.demo import DEEP_GREY_LABELS, make_phantom, simulate_gre
    from qsmprep.qsm import kernels
    from qsmprep.qsm.echoes import fit_field, r2star_map
    from qsmprep.qsm.masking import brain_mask
    from qsmprep.qsm.unwrap import unwrap_echoes

    ph = make_phantom(opts.size)
    sig, offset = simulate_gre(ph, snr=100.0, seed=0)
    clean, _ = simulate_gre(ph, snr=np.inf, seed=0)
    phase, mag = np.angle(sig).astype(np.float32), np.abs(sig).astype(np.float32)
    model = (2 * np.pi * kernels.GAMMA_BAR_MHZ_PER_T * ph.b0 * ph.total_field[..., None] * ph.tes
             + offset[..., None])
    truth = np.angle(clean) + 2 * np.pi * np.round((model - np.angle(clean)) / (2 * np.pi))
    del clean, model
    tissue = np.isin(ph.labels, (5, 6, *DEEP_GREY_LABELS))
    brain = ph.brain_mask
    print(f"phantom {opts.size}: {brain.shape} x {len(ph.tes)} echoes, {brain.sum()} brain voxels, "
          f"workers={opts.workers}; input {phase.nbytes / 1e9:.2f} GB of phase")

    grid = inversion_grid(brain)
    pair = fft_pair_seconds(grid, opts.workers)
    print(header(pair, grid, opts.workers))

    def report(name, seconds, peak, unit, text):
        print(row(name, seconds, unit, peak, text))

    if "laplacian" in stages:
        def score_laplacian(result):
            out = result[0]
            return [float(np.sqrt(np.mean(((out[..., e] - truth[..., e])[tissue]
                                          - np.mean((out[..., e] - truth[..., e])[tissue])) ** 2)))
                    for e in range(out.shape[-1])]
        err, dt, peak, unit = in_child(
            lambda: unwrap_echoes(phase, method="laplacian", voxel_size=ph.voxel_size, workers=opts.workers),
            score_laplacian, [phase], pair=(grid, opts.workers))
        report("laplacian", dt, peak, unit, "RMS phase error in tissue per echo (rad): "
               + " ".join(f"{e:.2f}" for e in err))

    unwrapped = quality = None
    if stages & {"romeo", "linear", "nonlinear"}:
        t0 = time.perf_counter()
        unwrapped, quality = unwrap_echoes(phase, method="romeo", voxel_size=ph.voxel_size, mag=mag, tes=ph.tes)
        romeo_inline = time.perf_counter() - t0
        noise = fit_field(unwrapped, mag, ph.tes, ph.b0)["noise"]
        tight = brain_mask(np.sqrt((mag**2).sum(-1)), ph.voxel_size, refine=True, quality=quality,
                           noise=noise)[0] & brain
    if "romeo" in stages:
        def score_romeo(result):
            out = result[0]
            return [(wrong_fraction(out[..., e], truth[..., e], tissue),
                     wrong_fraction(out[..., e], truth[..., e], brain),
                     wrong_fraction(out[..., e], truth[..., e], tight)) for e in range(out.shape[-1])]
        res, dt, peak, unit = in_child(
            lambda: unwrap_echoes(phase, method="romeo", voxel_size=ph.voxel_size, mag=mag, tes=ph.tes),
            score_romeo, [phase, mag], pair=(grid, opts.workers))
        report("romeo", dt, peak, unit, f"(in-process incl. numba compile: {romeo_inline:.1f} s)")
        for e, (a, b, c) in enumerate(res):
            print(f"           echo {e + 1}: wrong voxels {100 * a:.3f} % in tissue, {100 * b:.3f} % in the "
                  f"true brain mask, {100 * c:.4f} % in the refined mask")
        print(f"           refined mask: {tight.sum() / brain.sum():.3f} of the true brain mask")

    for method in ("linear", "nonlinear"):
        if method not in stages:
            continue

        def score_fit(res):
            out = []
            for region in (tight, tissue, brain):
                d = (res["field"] - ph.total_field)[region]
                d -= np.median(d)
                out.append(float(np.sqrt(np.mean(d**2))))
            return out
        (rmse_tight, rmse_tissue, rmse_brain), dt, peak, unit = in_child(
            lambda: fit_field(unwrapped, mag, ph.tes, ph.b0, method=method, phase_wrapped=phase),
            score_fit, [unwrapped, mag] + ([phase] if method == "nonlinear" else []), pair=(grid, opts.workers))
        report(method, dt, peak, unit, f"field RMSE {rmse_tight:.4f} ppm in the refined mask, "
               f"{rmse_tissue:.4f} ppm in tissue, {rmse_brain:.4f} ppm in the true brain mask")

    for method in ("loglinear", "arlo"):
        if method not in stages:
            continue

        def score_r2(result):
            r2s, reliable = result
            rel = np.abs(r2s - ph.r2star)[tissue] / ph.r2star[tissue]
            return float(np.median(rel)), float(reliable[tissue].mean())
        (med, rel_frac), dt, peak, unit = in_child(lambda: r2star_map(mag, ph.tes, method=method), score_r2, [mag],
                                                   pair=(grid, opts.workers))
        report(method, dt, peak, unit, f"R2* median relative error in tissue {100 * med:.2f} %, "
               f"reliable {100 * rel_frac:.1f} % of tissue")
    print(f"process peak RSS (phantom, signal and truth): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()

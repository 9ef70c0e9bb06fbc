"""Benchmark of brain masking on the demo phantom: BET, threshold and the refinement.

Usage::

    python benchmarks/bench_masking.py [--size full|small] [--oblique 0] [--repeat 1]

Builds the demo phantom and its simulated GRE, takes the echo-averaged (root-sum-of-
squares) magnitude, and for each method prints the wall time (best of ``--repeat``), the
Python-heap peak of that call (tracemalloc) and the Dice coefficient against the true
brain mask; then the refinement with the ROMEO quality and the field-fit noise map, and
the number of skull/air voxels left.  The process's peak resident memory (which includes
the phantom) is printed at the end.  Numbers depend on the machine: report them with its
core count and load.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np


def _timed(func, repeat):
    best, out, peak = np.inf, None, 0
    for _ in range(repeat):
        tracemalloc.start()
        t0 = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return out, best, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--oblique", type=float, default=0.0, help="tilt of the grid (degrees)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    from qsmprep.demo import SKULL_AND_AIR_LABELS, make_phantom, simulate_gre
    from qsmprep.qsm.echoes import fit_field
    from qsmprep.qsm.masking import bet_mask, brain_mask, threshold_mask
    from qsmprep.qsm.unwrap import unwrap_echoes

    t0 = time.perf_counter()
    phantom = make_phantom(args.size, seed=0, oblique_deg=args.oblique)
    sig, _ = simulate_gre(phantom, snr=100.0, seed=0)
    mag = np.sqrt((np.abs(sig) ** 2).sum(-1)).astype(np.float32)
    vs, truth = phantom.voxel_size, phantom.brain_mask
    bad = np.isin(phantom.labels, SKULL_AND_AIR_LABELS)
    print(f"phantom {args.size} {mag.shape} {vs} mm, oblique {args.oblique} deg: "
          f"{time.perf_counter() - t0:.1f} s; CPUs available: {len(os.sched_getaffinity(0))}")

    def dice(m):
        return 2 * (m & truth).sum() / (m.sum() + truth.sum())

    # compile numba once so that the timing is that of the algorithm
    bet_mask(mag[::4, ::4, ::4], tuple(4 * v for v in vs), n_iter=2, subdivisions=1)

    print(f"{'method':<28}{'seconds':>9}{'peak MiB':>10}{'Dice':>8}{'skull/air':>11}")
    (mask, thr), sec, peak = _timed(lambda: threshold_mask(mag, vs), args.repeat)
    print(f"{'threshold':<28}{sec:9.2f}{peak / 2**20:10.0f}{dice(mask):8.4f}{(mask & bad).sum():11d}")
    mask, sec, peak = _timed(lambda: bet_mask(mag, vs), args.repeat)
    print(f"{'bet':<28}{sec:9.2f}{peak / 2**20:10.0f}{dice(mask):8.4f}{(mask & bad).sum():11d}")

    unwrapped, _ = unwrap_echoes(np.angle(sig), method="laplacian", voxel_size=vs)
    noise = fit_field(unwrapped, np.abs(sig), phantom.tes, phantom.b0)["noise"]
    _, quality = unwrap_echoes(np.angle(sig), method="romeo", voxel_size=vs, mag=np.abs(sig), tes=phantom.tes)
    del unwrapped
    for method in ("threshold", "bet"):
        (tight, filled, _), sec, peak = _timed(
            lambda: brain_mask(mag, vs, method=method, refine=True, quality=quality, noise=noise), args.repeat)
        print(f"{'brain_mask ' + method + ' refined':<28}{sec:9.2f}{peak / 2**20:10.0f}{dice(tight):8.4f}"
              f"{(tight & bad).sum():11d}")
    print(f"peak RSS of the process (phantom included): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

"""Benchmark of background field removal and dipole inversion on the demo phantom.

Usage::

    python benchmarks/bench_qsm.py [--size full|small] [--workers 2] [--background vsharp,pdf,lbv]
                                   [--inversion tkd,tikhonov,ilsqr,medi,medi+0,tv]

Background removal runs on the phantom's total field with its true brain mask and is scored
against the true local field (relative RMSE and correlation inside the valid mask) and by
the fraction of the background field left when it is fed the background alone; the same
scores deeper than 20 mm from the mask's edge, and the method's floor on this phantom: its
score when fed the true local field alone (no background at all).  Inversion
runs on the true local field plus field noise of 0.001 ppm (SNR-100-like) and is scored by
the voxel NRMSE inside the brain, deep-grey ROI mean error and slope.  Each line gives the
wall time and the Python-heap peak of the call (tracemalloc; numpy buffers are included);
the process's peak resident memory (which includes the phantom) is printed at the end.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
from scipy import ndimage as ndi


def _timed(func):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = func()
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, elapsed, peak / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--background", default="vsharp,pdf,lbv")
    parser.add_argument("--inversion", default="tkd,tikhonov,ilsqr,medi,medi+0,tv")
    opts = parser.parse_args(argv)

    from qsmprep.demo import DEEP_GREY_LABELS, make_phantom
    from qsmprep.qsm.background import remove_background
    from qsmprep.qsm.inversion import invert

    ph = make_phantom(opts.size)
    mask = ph.brain_mask
    print(f"phantom {opts.size}: {mask.shape}, {mask.sum()} brain voxels, workers={opts.workers}")
    depth = ndi.distance_transform_edt(mask, sampling=ph.voxel_size)

    def score(local, valid):
        t = ph.local_field[valid] - ph.local_field[valid].mean()
        e = local[valid] - local[valid].mean()
        return np.sqrt(np.mean((e - t) ** 2)) / t.std(), np.corrcoef(e, t)[0, 1]

    for method in filter(None, opts.background.split(",")):
        (local, valid, info), dt, peak = _timed(lambda: remove_background(
            ph.total_field, mask, ph.voxel_size, method=method, b0_dir=ph.b0_dir, workers=opts.workers))
        rel, r = score(local, valid)
        deep_rel, deep_r = score(local, valid & (depth > 20))
        left, v2, _ = remove_background(np.where(mask, ph.background_field, 0), mask, ph.voxel_size,
                                        method=method, b0_dir=ph.b0_dir, workers=opts.workers)
        frac = left[v2].std() / ph.background_field[v2].std()
        # the floor of the method on this phantom: fed the true local field alone (no
        # background at all), whatever it removes is the local field's part that fields of
        # sources outside the mask reproduce (the harmonic ambiguity)
        alone, v3, _ = remove_background(np.where(mask, ph.local_field, 0), mask, ph.voxel_size,
                                         method=method, b0_dir=ph.b0_dir, workers=opts.workers)
        floor_rel, floor_r = score(alone, v3)
        print(f"background {method:7s} {dt:6.1f} s  heap {peak:4.2f} GB  rel.RMSE {rel:.3f}  r {r:.3f}  "
              f"(> 20 mm deep: {deep_rel:.3f}, r {deep_r:.3f})  background left {100 * frac:.2f} %  "
              f"valid {valid.sum() / mask.sum():.3f}; fed the true local field alone: rel.RMSE "
              f"{floor_rel:.3f}, r {floor_r:.3f}")

    rng = np.random.default_rng(0)
    field = np.where(mask, ph.local_field + rng.normal(0, 1e-3, mask.shape).astype(np.float32), 0)
    magnitude = ph.m0 * np.exp(-ph.r2star * 0.02)
    noise = np.full(mask.shape, 1e-3, np.float32)
    truth = ph.chi - ph.chi[mask].mean()
    true_roi = np.array([truth[ph.labels == lab].mean() for lab in DEEP_GREY_LABELS])
    for method in filter(None, opts.inversion.split(",")):
        (chi, info), dt, peak = _timed(lambda: invert(
            field, mask, ph.voxel_size, ph.b0_dir, method=method, magnitude=magnitude, noise=noise,
            r2star=ph.r2star, workers=opts.workers))
        c = chi - chi[mask].mean()
        nrmse = np.linalg.norm((c - truth)[mask]) / np.linalg.norm(truth[mask])
        roi = np.array([c[ph.labels == lab].mean() for lab in DEEP_GREY_LABELS])
        slope = np.polyfit(true_roi, roi, 1)[0]
        print(f"inversion  {method:7s} {dt:6.1f} s  heap {peak:4.2f} GB  NRMSE {nrmse:.3f}  "
              f"deep-grey |err| {np.abs(roi - true_roi).mean():.4f} ppm  slope {slope:.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()

"""Benchmark of the lesion analysis: N lesions on the 1 mm demo participant.

Usage::

    python benchmarks/bench_lesions.py [--lesions 50] [--size full]

Builds the demo phantom, keeps its own 13 lesions and adds spherical WM lesions (radius
1.5-4 mm, +0.014 ppm relative to WM, at random WM positions away from other lesions) until
there are ``--lesions``, adds Gaussian noise (0.01 ppm) to its χ, and times
:func:`qsmprep.analysis.lesions.label_lesions` + ``lesion_statistics`` (no registration:
the masks are on the GRE grid) in a forked child with its peak memory, also as a multiple of
one FFT pair of the padded inversion grid timed around it.  It checks that the added
lesions' mean relative χ is +0.014 ppm (±0.002).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import header, in_child, inversion_grid, row  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesions", type=int, default=50)
    parser.add_argument("--size", choices=["full", "small"], default="full")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from scipy import ndimage

    from qsmprep.analysis.lesions import TISSUE_CODES, label_lesions, lesion_statistics, tissue_from_labels
    from qsmprep.demo import DEMO_LABELS, LESION_DSEG, make_phantom

    ph = make_phantom(args.size, seed=0)
    vs = tuple(float(v) for v in ph.voxel_size)
    dseg = np.zeros(ph.labels.shape, np.int16)
    for value, (_name, labs) in LESION_DSEG.items():
        dseg[np.isin(ph.labels, labs)] = value
    tissue, _ = tissue_from_labels(ph.labels, {k: v[:2] for k, v in DEMO_LABELS.items()})
    chi = ph.chi.copy()
    rng = np.random.default_rng(1)
    n_own = label_lesions(dseg, vs)[0].max()
    wm = (tissue == TISSUE_CODES["wm"]) & ndimage.binary_erosion(ph.brain_mask, iterations=int(8 / vs[0]))
    ii, jj, kk = np.indices(chi.shape, sparse=True)
    added = 0
    free = wm & (ndimage.distance_transform_edt(dseg == 0, sampling=vs) > 12.0)
    while n_own + added < args.lesions:
        cand = np.argwhere(free)
        c = cand[rng.integers(len(cand))]
        r = rng.uniform(1.5, 4.0) / vs[0]
        ball = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 + (kk - c[2]) ** 2 <= r * r
        if not (tissue[ball] == TISSUE_CODES["wm"]).all() or dseg[ndimage.binary_dilation(ball, iterations=6)].any():
            continue
        dseg[ball] = 5
        chi[ball] += 0.014
        free &= ~ndimage.binary_dilation(ball, iterations=12)
        added += 1
    chi += rng.normal(0.0, 0.01, chi.shape).astype(np.float32) * ph.brain_mask

    def stage():
        lesions, sources, _ = label_lesions(dseg, vs)
        rows, _ = lesion_statistics(chi, lesions, tissue, vs, ph.affine, r2star=ph.r2star, mask=ph.brain_mask,
                                    source_labels=sources)
        return rows

    def score(rows):
        rel = [r["chi_relative"] for r in rows if r["input_label"] == 5]
        return len(rows), float(np.mean(rel)), float(np.std(rel))

    grid = inversion_grid(ph.brain_mask)
    (n_rows, mean, sd), seconds, peak, pair = in_child(stage, score, [chi, dseg, tissue, ph.r2star],
                                                      pair=(grid, args.workers))
    print(header(pair, grid, args.workers))
    print(row(f"lesions ({n_own + added})", seconds, pair, peak,
              f"{n_rows} rows; added lesions' relative chi {mean:+.4f} ± {sd:.4f} ppm (truth +0.014)"))
    return 0 if abs(mean - 0.014) < 0.002 else 1


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmarks share: the FFT-pair unit, forked stages with their peak memory, a table.

Every stage's time is also given as a multiple of one FFT pair (``rfftn`` + ``irfftn``, float32,
``workers`` threads) of the padded grid that dipole inversion works on, timed in the same
process around the stage (:func:`fft_pair_seconds`, :func:`in_child`'s ``pair``), so the
ratios compare across machines, and hold on a shared host whose speed drifts: an iterative
inversion is a count of such pairs plus element-wise work.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import resource
import time

import numpy as np


def inversion_grid(mask):
    """The padded FFT grid of dipole inversion on ``mask`` (its bounding box, the methods' ``pad``)."""
    from qsmprep.qsm import kernels
    from qsmprep.qsm.inversion import tkd

    pad = inspect.signature(tkd).parameters["pad"].default
    idx = np.nonzero(mask)
    box = tuple(int(i.max() - i.min() + 1) for i in idx)
    return kernels.padded_shape(box, pad)


def fft_pair_seconds(shape, workers, *, repeats=7):
    """Median seconds of one float32 ``rfftn`` + ``irfftn`` pair on ``shape`` with ``workers``."""
    import scipy.fft as sfft

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        sfft.irfftn(sfft.rfftn(x, workers=workers), s=shape, workers=workers)
        if i >= 2:  # the first two plan and warm the caches
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def in_child(stage, score, inputs, *, warmup=None, pair=None):
    """Run ``stage()`` in a forked child; return (``score(output)``, seconds, peak GB, pair seconds).

    A forked child starts with its parent's resident set, so the stage's peak is the child's
    high-water mark above its starting RSS (what the stage allocates) plus the bytes of the
    ``inputs`` it reads (what a pipeline step loads from disk first).  ``warmup``, if given,
    runs first in the child, untimed (e.g. a small call that compiles numba code; its memory
    is in the high-water mark only if it exceeds the stage's).  ``pair``, ``(shape, workers)``,
    has the child time an FFT pair (:func:`fft_pair_seconds`) just before and just after the
    stage and return their mean, so the stage's FFT-pair ratio holds on a machine whose speed
    drifts (a shared host); else the last value is None.
    """
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def target():
        if warmup is not None:
            warmup()
        before = fft_pair_seconds(*pair) if pair else None
        start = _rss_bytes()
        t0 = time.perf_counter()
        out = stage()
        elapsed = time.perf_counter() - t0
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
        unit = 0.5 * (before + fft_pair_seconds(*pair)) if pair else None
        child.send((score(out), elapsed, (max(grown, 0) + sum(x.nbytes for x in inputs)) / 1e9, unit))

    proc = ctx.Process(target=target)
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def row(name, seconds, pair, peak_gb=None, text=""):
    """One line of a stage table: seconds, FFT pairs, peak memory, then free text."""
    peak = f"{peak_gb:5.2f} GB" if peak_gb is not None else "        "
    return f"{name:<24s} {seconds:8.2f} s {seconds / pair:8.0f} pairs  {peak}  {text}"


def header(pair, shape, workers):
    """The table's first line: the unit and the grid it was measured on."""
    return (f"one FFT pair of the padded inversion grid {shape} with {workers} worker(s): {pair:.4f} s "
            f"(forked stages' ratios use a pair timed around each)\n"
            f"{'stage':<24s} {'seconds':>10s} {'fft_pairs':>14s}  {'peak':>8s}")


def method_spec(spec):
    """``METHOD[:KEY=VALUE...]`` (e.g. ``medi:solver=admm``) as ``(method, options)``.

    Values are JSON where they parse (numbers, true/false), else strings.
    """
    import json

    def value(text):
        try:
            return json.loads(text)
        except ValueError:
            return text

    method, *pairs = spec.split(":")
    return method, {k: value(v) for k, v in (p.split("=", 1) for p in pairs)}

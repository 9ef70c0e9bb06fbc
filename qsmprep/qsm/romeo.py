"""ROMEO-style quality-guided region-growing phase unwrapping.

After Dymerska et al., "Phase unwrapping with a rapid opensource minimum spanning tree
algorithm (ROMEO)", MRM 2021;85:2294-2308 — our own implementation:

* every edge between 6-neighbours gets a quality in [0, 1], the product of
  (1) phase coherence ``1 − |∠(e^{i(φ_j−φ_i)})| / π`` of the echo being unwrapped,
  (2) phase-gradient coherence between two echoes: the wrapped neighbour difference of the
  second echo agrees with that of the first scaled by TE2/TE1,
  (3) magnitude coherence ``(min(m_i, m_j) / max(m_i, m_j))²`` and
  (4) a magnitude weight ``min(1, mean(m_i, m_j) / median(m))`` (dark voxels last);
* the qualities are binned into 256 levels, and a bucket priority queue grows the unwrapped
  region from the best seed, always across the best available edge, unwrapping each new
  voxel against its already unwrapped neighbour (a minimum spanning tree of the edge costs);
  disconnected parts of the mask get their own seeds;
* later echoes are unwrapped temporally: the first echo is unwrapped spatially, the second
  through the (well sampled, offset-free) spatially unwrapped difference to the first, and
  each later echo is corrected by the 2π multiple that brings it closest to the straight
  line fitted through the echoes unwrapped before it (intercept = the receive phase offset).

The growth loop is compiled with numba (``cache=True``).
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm.phase import wrap

N_BINS = 256


def _jit(func):
    from numba import njit

    return njit(cache=True, nogil=True)(func)


#: Entries per block of the edge queue's buckets (see :func:`_grow_compiled`).
_BLOCK = 4096


def _grow_impl(phase, weights, valid, strides, order, pool, prev, top, fill, free):  # pragma: no cover - numba
    """Grow from each unvisited seed in ``order`` across the best queued edge (lowest bin).

    The queue (:func:`_grow_compiled`): ``top[b]`` the top block of bucket ``b`` (−1 empty),
    ``fill[b]`` its entries, ``prev`` each block's next one down, ``pool`` the blocks' entries,
    ``free`` the free blocks (a stack).  An edge with a voxel outside the mask has no weight
    (bin ``N_BINS``; see :func:`unwrap_romeo_volume`), so the mask itself is not read here.
    """
    n = phase.size
    visited = np.zeros(n, dtype=np.bool_)
    out = phase.copy()
    two_pi = 2.0 * np.pi
    n_free = free.size
    nb = np.empty(6, dtype=np.int64)      # the new voxel's candidate edges and their bins
    ne = np.empty(6, dtype=np.int64)
    for seed_idx in range(order.size):
        seed = order[seed_idx]
        if visited[seed] or not valid[seed]:
            continue
        visited[seed] = True
        level = N_BINS
        v = seed
        while True:
            # queue the edges from visited voxel v to its unvisited neighbours
            k = 0
            for a in range(3):
                u = v + strides[a]
                e = v * 3 + a
                if u < n and weights[e] < N_BINS and not visited[u]:
                    nb[k] = weights[e]
                    ne[k] = e
                    k += 1
                w = v - strides[a]
                if w >= 0:
                    e = w * 3 + a
                    if weights[e] < N_BINS and not visited[w]:
                        nb[k] = weights[e]
                        ne[k] = e
                        k += 1
            for j in range(k):
                bj = nb[j]
                c = top[bj]
                if c < 0 or fill[bj] == _BLOCK:
                    n_free -= 1
                    c2 = free[n_free]
                    prev[c2] = c
                    top[bj] = c2
                    fill[bj] = 0
                    c = c2
                pool[c * _BLOCK + fill[bj]] = ne[j]
                fill[bj] += 1
                if bj < level:
                    level = bj
            # the best queued edge that reaches an unvisited voxel
            new = -1
            while level < N_BINS:
                c = top[level]
                if c < 0:
                    level += 1
                    continue
                fill[level] -= 1
                e = pool[c * _BLOCK + fill[level]]
                if fill[level] == 0:
                    free[n_free] = c
                    n_free += 1
                    top[level] = prev[c]
                    fill[level] = _BLOCK if prev[c] >= 0 else 0
                v0 = e // 3
                u0 = v0 + strides[e - v0 * 3]
                if visited[v0] and visited[u0]:
                    continue
                src, new = (v0, u0) if visited[v0] else (u0, v0)
                out[new] = out[new] + two_pi * np.round((out[src] - out[new]) / two_pi)
                visited[new] = True
                break
            if new < 0:
                break
            v = new
    return out, visited


_grow = None


def _grow_compiled():
    """The compiled growth.

    The priority queue is a bucket per quality bin; each bucket is a last-in-first-out
    stack of fixed-size blocks of edge ids (blocks recycled through a free list).  The
    growth is memory-bound: a linked list through one entry per edge (the previous
    queue) read its links at random, while a block stack reads and writes where it last
    wrote.  The order in which edges leave the queue, and so the result, is the same.
    """
    global _grow
    if _grow is None:
        grow = _jit(_grow_impl)

        def _grow(phase, weights, valid, strides, order):
            # edge ids in 32 bits while they fit (half the memory the growth touches)
            index = np.int32 if weights.size < 2**31 - 1 else np.int64
            n_blocks = weights.size // _BLOCK + N_BINS + 1    # every edge queued at once, every bucket part-full
            return grow(phase, weights, valid, strides, order, np.empty(n_blocks * _BLOCK, dtype=index),
                        np.full(n_blocks, -1, dtype=np.int64), np.full(N_BINS, -1, dtype=np.int64),
                        np.zeros(N_BINS, dtype=np.int64), np.arange(n_blocks - 1, -1, -1, dtype=np.int64))

    return _grow


def edge_quality(phase, mag=None, phase2=None, te_ratio=None):
    """Edge qualities in [0, 1], shape (3,) + phase.shape; edge (a, v) joins v and v + 1 along a."""
    phase = np.asarray(phase, dtype=np.float32)
    q = np.zeros((3,) + phase.shape, dtype=np.float32)
    med = None
    if mag is not None:
        mag = np.asarray(mag, dtype=np.float32)
        med = float(np.median(mag[mag > 0])) if np.any(mag > 0) else 1.0
    for a in range(3):
        sl_lo = [slice(None)] * 3
        sl_hi = [slice(None)] * 3
        sl_lo[a] = slice(0, -1)
        sl_hi[a] = slice(1, None)
        lo, hi = tuple(sl_lo), tuple(sl_hi)
        d1 = wrap(phase[hi] - phase[lo])
        qa = 1.0 - np.abs(d1) / np.pi
        if phase2 is not None and te_ratio is not None:
            p2 = np.asarray(phase2, dtype=np.float32)
            d2 = wrap(p2[hi] - p2[lo])
            qa = qa * np.clip(1.0 - np.abs(wrap(d2 - d1 * np.float32(te_ratio))) / np.pi, 0, 1)
        if mag is not None:
            m_lo, m_hi = mag[lo], mag[hi]
            mx = np.maximum(m_lo, m_hi)
            with np.errstate(invalid="ignore", divide="ignore"):
                coh = np.where(mx > 0, (np.minimum(m_lo, m_hi) / mx) ** 2, 0.0)
            qa = qa * coh * np.minimum(1.0, 0.5 * (m_lo + m_hi) / med)
        q[(a,) + lo] = qa
    return q


def _voxel_quality(q):
    """Mean quality of each voxel's edges (``q`` from :func:`edge_quality`)."""
    shape = q.shape[1:]
    vq = np.zeros(shape, dtype=np.float32)
    cnt = np.zeros(shape, dtype=np.float32)
    for a in range(3):
        sl_lo = [slice(None)] * 3
        sl_hi = [slice(None)] * 3
        sl_lo[a] = slice(0, -1)
        sl_hi[a] = slice(1, None)
        edge = q[a][tuple(sl_lo)]
        vq[tuple(sl_lo)] += edge
        vq[tuple(sl_hi)] += edge
        cnt[tuple(sl_lo)] += 1
        cnt[tuple(sl_hi)] += 1
    return np.where(cnt > 0, vq / np.maximum(cnt, 1), 0).astype(np.float32)


def voxel_quality(phase, mag, tes=None):
    """ROMEO's voxel quality map in [0, 1] of a multi-echo phase (x, y, z, echo).

    The first echo's edge qualities (phase gradient, second-echo phase-gradient coherence
    and magnitude coherence, Dymerska et al., MRM 2021; :func:`edge_quality`) averaged over
    each voxel's six edges: the map :func:`unwrap_romeo` returns, available to any
    unwrapping method for quality-guided mask refinement.
    """
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim == 3:
        phase = phase[..., None]
    mag = np.asarray(mag, dtype=np.float32)
    if mag.ndim == 3:
        mag = mag[..., None]
    if phase.shape[-1] > 1:
        tes = np.arange(1, phase.shape[-1] + 1, dtype=float) if tes is None else np.asarray(tes, dtype=float)
        q = edge_quality(phase[..., 0], mag[..., 0], phase[..., 1], tes[1] / tes[0])
    else:
        q = edge_quality(phase[..., 0], mag[..., 0])
    return _voxel_quality(q)


def unwrap_romeo_volume(phase, *, mag=None, phase2=None, te_ratio=None, mask=None):
    """Spatially unwrap one 3D phase by quality-guided region growing.

    Returns (unwrapped phase, voxel quality in [0, 1]); outside ``mask`` the input is returned.
    """
    phase = np.asarray(phase, dtype=np.float32)
    shape = phase.shape
    valid = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    q = edge_quality(phase, mag, phase2, te_ratio)
    # edges leaving the mask never join the tree
    for a in range(3):
        sl_lo = [slice(None)] * 3
        sl_hi = [slice(None)] * 3
        sl_lo[a] = slice(0, -1)
        sl_hi[a] = slice(1, None)
        both = valid[tuple(sl_lo)] & valid[tuple(sl_hi)]
        q[a][tuple(sl_lo)] *= both  # (the last plane along a has no forward edge: q is 0 there)
    bins = np.clip(np.round((1.0 - q) * (N_BINS - 1)), 0, N_BINS - 1).astype(np.uint16)
    bins[q <= 0] = N_BINS  # no edge
    weights = np.ascontiguousarray(np.moveaxis(bins, 0, -1)).reshape(-1)  # edge id = voxel * 3 + axis
    # voxel quality: mean quality of its edges; seeds in order of decreasing quality
    vq = _voxel_quality(q)
    # (16-bit keys: numpy's stable sort is then a radix sort, ~10x faster than on floats)
    key = np.round((1.0 - vq * valid) * 65535).astype(np.uint16).reshape(-1)
    order = np.argsort(key, kind="stable").astype(np.int64)
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    out, _ = _grow_compiled()(phase.reshape(-1), weights, valid.reshape(-1), strides, order)
    return out.reshape(shape).astype(np.float32), vq


def unwrap_romeo(phase, mag, tes, *, mask=None):
    """Unwrap a multi-echo phase (x, y, z, echo): spatial for echoes 1-2, temporal after.

    Returns (unwrapped 4D phase, voxel quality of the first echo).
    """
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim == 3:
        phase = phase[..., None]
    tes = np.asarray(tes, dtype=np.float64) if tes is not None else np.arange(1, phase.shape[-1] + 1, dtype=float)
    mag = None if mag is None else np.asarray(mag, dtype=np.float32)
    n_echoes = phase.shape[-1]
    out = np.empty_like(phase)
    second = phase[..., 1] if n_echoes > 1 else None
    ratio = tes[1] / tes[0] if n_echoes > 1 else None
    m1 = None if mag is None else mag[..., 0]
    out[..., 0], quality = unwrap_romeo_volume(phase[..., 0], mag=m1, phase2=second, te_ratio=ratio, mask=mask)
    if n_echoes == 1:
        return out, quality
    # echo 2 through the difference to echo 1: ∠(e^{i(φ2−φ1)}) = ω·ΔTE is well sampled and
    # free of the receive offset, so it is unwrapped spatially and added to echo 1
    if mask is not None:
        region = np.asarray(mask, bool)
    elif mag is not None:  # no mask: judge the global 2π multiple where there is signal
        region = mag[..., 0] > 0.1 * np.percentile(mag[..., 0], 99)
    else:
        region = np.ones(phase.shape[:3], bool)
    step = wrap(phase[..., 1] - phase[..., 0])
    step_u, _ = unwrap_romeo_volume(step, mag=m1, mask=mask)
    step_u -= 2 * np.pi * np.round(np.median(step_u[region]) / (2 * np.pi))
    out[..., 1] = out[..., 0] + step_u
    # running sums Σ u_k and Σ t_k u_k over the echoes unwrapped so far
    s0 = out[..., 0] + out[..., 1]
    s1 = np.float32(tes[0]) * out[..., 0] + np.float32(tes[1]) * out[..., 1]
    for e in range(2, n_echoes):
        # straight line through the echoes unwrapped so far (least squares), extrapolated:
        # slope = Σ (t_k − t̄) u_k / Σ (t_k − t̄)² = (Σ t_k u_k − t̄ Σ u_k) / Σ (t_k − t̄)²
        t = tes[:e]
        tbar = t.mean()
        slope = (s1 - np.float32(tbar) * s0) * np.float32(1.0 / ((t - tbar) ** 2).sum())
        predicted = s0 * np.float32(1.0 / e) + slope * np.float32(tes[e] - tbar)
        pe = phase[..., e]
        ue = pe + np.float32(2 * np.pi) * np.round((predicted - pe) * np.float32(1 / (2 * np.pi)))
        out[..., e] = ue
        s0 += ue
        s1 += np.float32(tes[e]) * ue
    return out, quality

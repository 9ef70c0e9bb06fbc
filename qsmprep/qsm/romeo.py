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


def _push_edges_impl(v, weights, visited, strides, nxt, head, level):  # pragma: no cover - numba
    """Queue the edges from visited voxel ``v`` to its unvisited neighbours; return the lowest bin.

    An edge with a voxel outside the mask has no weight (bin ``N_BINS``; see
    :func:`unwrap_romeo_volume`), so the mask itself is not read here.
    """
    n = visited.size
    for a in range(3):
        u = v + strides[a]
        e = v * 3 + a
        if u < n and weights[e] < N_BINS and not visited[u]:
            b = weights[e]
            nxt[e] = head[b]
            head[b] = e
            level = min(level, b)
        w = v - strides[a]
        if w >= 0:
            e = w * 3 + a
            if weights[e] < N_BINS and not visited[w]:
                b = weights[e]
                nxt[e] = head[b]
                head[b] = e
                level = min(level, b)
    return level


def _grow_impl(phase, weights, valid, strides, order, nxt, head, push):  # pragma: no cover - numba
    n = phase.size
    visited = np.zeros(n, dtype=np.bool_)
    out = phase.copy()
    two_pi = 2.0 * np.pi
    for seed_idx in range(order.size):
        seed = order[seed_idx]
        if visited[seed] or not valid[seed]:
            continue
        visited[seed] = True
        level = push(seed, weights, visited, strides, nxt, head, N_BINS)
        while level < N_BINS:
            e = head[level]
            if e < 0:
                level += 1
                continue
            head[level] = nxt[e]
            v = e // 3
            u = v + strides[e - v * 3]
            if visited[v] and visited[u]:
                continue
            src, new = (v, u) if visited[v] else (u, v)
            out[new] = out[new] + two_pi * np.round((out[src] - out[new]) / two_pi)
            visited[new] = True
            level = push(new, weights, visited, strides, nxt, head, level)
    return out, visited


_grow = None


def _grow_compiled():
    global _grow
    if _grow is None:
        push = _jit(_push_edges_impl)
        grow = _jit(_grow_impl)

        def _grow(phase, weights, valid, strides, order):
            # the edge queue's links (one per edge) and bucket heads: 32-bit while the edge ids
            # fit, which halves the memory the growth reads at random (the loop is memory-bound)
            index = np.int32 if weights.size < 2**31 - 1 else np.int64
            nxt = np.full(weights.size, -1, dtype=index)
            head = np.full(N_BINS, -1, dtype=index)
            return grow(phase, weights, valid, strides, order, nxt, head, push)

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

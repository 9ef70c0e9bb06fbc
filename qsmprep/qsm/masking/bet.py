"""BET-style brain extraction (Smith, Hum Brain Mapp 2002;17:143-155) with numpy/scipy.

Icosphere tessellation, the three update terms of the deformable surface, the intensity
parameters t2, t98, t, tm, a self-intersection check (Möller–Trumbore), a numba-compiled
inward-profile sampler, and a parity ray-casting fill of the final surface.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage, sparse
from scipy.spatial import cKDTree

from qsmprep.qsm._params import keyword_defaults
from qsmprep.qsm.masking._morphology import _check_volume, _check_voxel_size, largest_component


def icosphere(subdivisions=4):
    """Unit icosphere: ``(vertices (V, 3), faces (F, 3))``, faces counter-clockwise from outside.

    An icosahedron whose triangles are split in four ``subdivisions`` times, new vertices
    projected onto the sphere: ``V = 10·4ⁿ + 2`` (n = 4: 2562 vertices, BET's tessellation).
    """
    if int(subdivisions) != subdivisions or subdivisions < 0:
        raise ValueError(f"subdivisions must be a non-negative integer, got {subdivisions!r}")
    t = (1.0 + np.sqrt(5.0)) / 2.0
    verts = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0],
                      [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                      [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float64)
    faces = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
                      [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
                      [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
                      [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64)
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    for _ in range(int(subdivisions)):
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        key = np.sort(edges, axis=1)
        uniq, inverse = np.unique(key, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        mid = verts[uniq[:, 0]] + verts[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        n_faces = faces.shape[0]
        m01 = inverse[:n_faces] + verts.shape[0]
        m12 = inverse[n_faces:2 * n_faces] + verts.shape[0]
        m20 = inverse[2 * n_faces:] + verts.shape[0]
        a, b, c = faces.T
        faces = np.concatenate([np.stack([a, m01, m20], 1), np.stack([b, m12, m01], 1),
                                np.stack([c, m20, m12], 1), np.stack([m01, m12, m20], 1)])
        verts = np.concatenate([verts, mid])
    return verts, faces


def _mesh_operators(n_vertices, faces):
    """Neighbour-mean matrix (V×V), vertex-face incidence (V×F), unique edges (E×2)."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    adj = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_vertices, n_vertices))
    degree = np.asarray(adj.sum(axis=1)).ravel()
    mean_nb = sparse.diags(1.0 / degree) @ adj
    inc = sparse.csr_matrix((np.ones(faces.size), (faces.ravel(), np.repeat(np.arange(len(faces)), 3))),
                            shape=(n_vertices, len(faces)))
    return mean_nb.tocsr(), inc, edges


def _vertex_normals(verts, faces, incidence):
    """Unit outward vertex normals: the mean of the adjacent faces' unit normals."""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
    vn = incidence @ fn
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    return vn


def surface_self_intersects(verts, faces):
    """True if an edge of the triangle mesh crosses one of its (non-adjacent) triangles.

    Candidate triangle/edge pairs come from a k-d tree of triangle centroids; each pair
    is tested exactly with the Möller–Trumbore segment/triangle intersection (Möller &
    Trumbore, J Graph Tools 1997).
    """
    verts = np.asarray(verts, dtype=np.float64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    centroid = (a + b + c) / 3.0
    f_rad = np.max(np.linalg.norm(np.stack([a, b, c]) - centroid, axis=2), axis=0)
    p0, p1 = verts[edges[:, 0]], verts[edges[:, 1]]
    mid = (p0 + p1) / 2.0
    e_rad = np.linalg.norm(p1 - p0, axis=1) / 2.0
    tree = cKDTree(centroid)
    candidates = tree.query_ball_point(mid, e_rad + f_rad.max() + 1e-9)
    counts = np.array([len(cnd) for cnd in candidates])
    ei = np.repeat(np.arange(len(edges)), counts)
    fi = np.fromiter((f for cnd in candidates for f in cnd), dtype=np.int64, count=counts.sum())
    shares = (faces[fi] == edges[ei, 0:1]).any(1) | (faces[fi] == edges[ei, 1:2]).any(1)
    ei, fi = ei[~shares], fi[~shares]
    if ei.size == 0:
        return False
    orig, direc = p0[ei], p1[ei] - p0[ei]
    e1, e2 = b[fi] - a[fi], c[fi] - a[fi]
    pvec = np.cross(direc, e2)
    det = np.einsum("ij,ij->i", e1, pvec)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    tvec = orig - a[fi]
    u = np.einsum("ij,ij->i", tvec, pvec) * inv
    qvec = np.cross(tvec, e1)
    v = np.einsum("ij,ij->i", direc, qvec) * inv
    s = np.einsum("ij,ij->i", e2, qvec) * inv
    eps = 1e-9
    hit = ok & (u > eps) & (v > eps) & (u + v < 1 - eps) & (s > eps) & (s < 1 - eps)
    return bool(hit.any())


def surface_to_mask(verts_mm, faces, shape, voxel_size):
    """Voxels whose centre lies inside a closed triangle surface (parity ray casting).

    Rays run along the third voxel axis through every (i, j) voxel column, offset by a
    tiny irrational amount so that no ray meets a vertex or an edge exactly; each crossing
    toggles inside/outside for the voxel centres above it.
    """
    vs = np.asarray(_check_voxel_size(voxel_size))
    p = np.asarray(verts_mm, dtype=np.float64) / vs
    tri = p[faces]  # (F, 3 vertices, 3 coords), voxel index units
    eps = np.array([1.3e-4 * np.sqrt(2.0), 0.7e-4 * np.sqrt(3.0)])
    lo = np.ceil(tri[:, :, :2].min(1) - eps).astype(np.int64)
    hi = np.floor(tri[:, :, :2].max(1) - eps).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(shape[:2]) - 1)
    n_i, n_j = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    valid = (n_i > 0) & (n_j > 0)
    tri, lo, n_i, n_j = tri[valid], lo[valid], n_i[valid], n_j[valid]
    count = n_i * n_j
    fidx = np.repeat(np.arange(len(tri)), count)
    start = np.cumsum(count) - count
    local = np.arange(count.sum()) - np.repeat(start, count)
    ii = lo[fidx, 0] + local // n_j[fidx]
    jj = lo[fidx, 1] + local % n_j[fidx]
    # barycentric coordinates of the ray (ii, jj) + eps in each triangle's xy projection
    t = tri[fidx]
    x, y = ii + eps[0], jj + eps[1]
    x0, y0 = t[:, 0, 0], t[:, 0, 1]
    x1, y1 = t[:, 1, 0], t[:, 1, 1]
    x2, y2 = t[:, 2, 0], t[:, 2, 1]
    den = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    good = np.abs(den) > 1e-14
    den = np.where(good, den, 1.0)
    l0 = ((y1 - y2) * (x - x2) + (x2 - x1) * (y - y2)) / den
    l1 = ((y2 - y0) * (x - x2) + (x0 - x2) * (y - y2)) / den
    l2 = 1.0 - l0 - l1
    inside = good & (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    z = l0 * t[:, 0, 2] + l1 * t[:, 1, 2] + l2 * t[:, 2, 2]
    ii, jj, z = ii[inside], jj[inside], z[inside]
    k = np.clip(np.ceil(z), 0, shape[2]).astype(np.int64)  # first voxel centre above the crossing
    toggles = np.zeros((shape[0], shape[1], shape[2] + 1), dtype=np.int32)
    np.add.at(toggles, (ii, jj, k), 1)
    return (np.cumsum(toggles, axis=2)[..., : shape[2]] & 1).astype(bool)


def _profile_extrema_impl(mag, verts, normals, inv_vs, step, n1, n2, out_min, out_max):  # pragma: no cover
    """Min over ``n1`` and max over the first ``n2`` trilinear samples inward along each normal."""
    nx, ny, nz = mag.shape
    for v in range(verts.shape[0]):
        lo = np.inf
        hi = -np.inf
        for d in range(n1):
            cx = (verts[v, 0] - d * step * normals[v, 0]) * inv_vs[0]
            cy = (verts[v, 1] - d * step * normals[v, 1]) * inv_vs[1]
            cz = (verts[v, 2] - d * step * normals[v, 2]) * inv_vs[2]
            i0, j0, k0 = int(np.floor(cx)), int(np.floor(cy)), int(np.floor(cz))
            fx, fy, fz = cx - i0, cy - j0, cz - k0
            val = 0.0
            for di in range(2):
                i = i0 + di
                if i < 0 or i >= nx:
                    continue
                wx = fx if di else 1.0 - fx
                for dj in range(2):
                    j = j0 + dj
                    if j < 0 or j >= ny:
                        continue
                    wy = fy if dj else 1.0 - fy
                    for dk in range(2):
                        k = k0 + dk
                        if k < 0 or k >= nz:
                            continue
                        wz = fz if dk else 1.0 - fz
                        val += wx * wy * wz * mag[i, j, k]
            lo = min(lo, val)
            if d < n2:
                hi = max(hi, val)
        out_min[v] = lo
        out_max[v] = hi


@functools.lru_cache(maxsize=None)
def _profile_extrema():
    """The inward-profile sampler, compiled with numba on first use."""
    from numba import njit

    return njit(cache=True, nogil=True)(_profile_extrema_impl)


def _bet_intensities(mag, vs):
    """BET's robust intensity range, head centre of gravity and radius (Smith 2002, §2.2)."""
    t2, t98 = (float(v) for v in np.percentile(mag, [2.0, 98.0]))
    if not t98 > t2:
        raise ValueError("bet: the magnitude has no contrast (2nd and 98th percentiles are equal)")
    t = t2 + 0.1 * (t98 - t2)
    head = mag > t
    weights = np.minimum(mag[head], t98).astype(np.float64)
    idx = np.nonzero(head)
    cog = np.array([np.sum(i * weights) / weights.sum() for i in idx]) * vs
    volume = head.sum() * float(np.prod(vs))
    radius = float((3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0))
    # tm: median within a sphere of that radius around the centre of gravity, of the
    # voxels inside the robust range
    lo = np.maximum(np.floor((cog - radius) / vs).astype(int), 0)
    hi = np.minimum(np.ceil((cog + radius) / vs).astype(int) + 1, mag.shape)
    sub = mag[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    grids = np.meshgrid(*[(np.arange(a, b) * v - c) ** 2 for a, b, v, c in zip(lo, hi, vs, cog)],
                        indexing="ij", sparse=True)
    ball = (grids[0] + grids[1] + grids[2]) <= radius**2
    vals = sub[ball]
    vals = vals[(vals > t2) & (vals < t98)]
    tm = float(np.median(vals)) if vals.size else float((t2 + t98) / 2)
    return t2, t98, t, tm, cog, radius


def bet_surface(magnitude, voxel_size, *, f=0.5, g=0.0, n_iter=1000, subdivisions=4, radius_scale=0.5,
                d1_mm=20.0, rmin_mm=3.33, rmax_mm=10.0, vertical=(0.0, 0.0, 1.0), max_passes=5):
    """BET's deformable surface on a 3D magnitude; returns ``(vertices mm, faces, info)``.

    Smith S.M., "Fast robust automated brain extraction", Hum Brain Mapp 2002;17:143-155.

    A tessellated sphere of radius ``radius_scale`` × the head radius is placed at the
    head's centre of gravity and moved, vertex by vertex, by ``u = u1 + u2 + u3``:

    * ``u1 = ½ s_t``: the tangential part of ``s``, the vector from the vertex to the
      mean of its neighbours (keeps the vertices evenly spaced);
    * ``u2 = f2 s_n`` with ``f2 = ½(1 + tanh(F (1/r − E)))``, the local curvature
      ``1/r = 2|s_n| / l²`` (``l``: mean edge length), ``E = (1/r_min + 1/r_max)/2``,
      ``F = 6/(1/r_min − 1/r_max)`` (smoothness);
    * ``u3 = 0.05 f3 l n̂`` with ``f3 = 2(I_min − t_l)/(I_max − t2)``,
      ``t_l = (I_max − t2) b_t + t2``, ``I_min = max(t2, min(tm, I(0..d1)))`` and
      ``I_max = min(tm, max(t, I(0..d2)))`` sampled inward along the normal ``n̂``
      (``d2 = d1/2``), and ``b_t = f + g (z − z_cog)/r`` clipped to [0, 1], with ``z``
      the position along ``vertical``.

    ``t2``/``t98`` are the 2nd/98th intensity percentiles, ``t = t2 + 0.1(t98 − t2)``, the
    head is the voxels above ``t`` (centre of gravity weighted by the intensity clamped at
    ``t98``, radius from its volume), ``tm`` the median intensity inside that sphere.
    After ``n_iter`` iterations the surface is checked for self-intersection; if it
    intersects itself the evolution is repeated from the sphere with the smoothness
    term's curvature scale doubled per pass during the first 75 % of the iterations
    (BET's "higher smoothness constraint"), at most ``max_passes`` times.

    Positions are in mm from the centre of voxel (0, 0, 0) along the voxel axes; the
    profiles are sampled every ``min(1 mm, smallest voxel size)`` by trilinear
    interpolation (zero outside the field of view) in a numba-compiled loop.
    """
    mag = np.asarray(_check_volume(magnitude), dtype=np.float32)
    vs = np.asarray(_check_voxel_size(voxel_size))
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"f (fractional intensity threshold) must be in [0, 1], got {f!r}")
    if not -1.0 <= g <= 1.0:
        raise ValueError(f"g (vertical gradient of the threshold) must be in [-1, 1], got {g!r}")
    if int(n_iter) != n_iter or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
    if not 0.0 < radius_scale <= 1.0:
        raise ValueError(f"radius_scale must be in (0, 1], got {radius_scale!r}")
    if not d1_mm > 0:
        raise ValueError(f"d1_mm must be > 0, got {d1_mm!r}")
    if not 0 < rmin_mm < rmax_mm:
        raise ValueError(f"need 0 < rmin_mm < rmax_mm, got {rmin_mm!r}, {rmax_mm!r}")
    if int(max_passes) != max_passes or max_passes < 1:
        raise ValueError(f"max_passes must be a positive integer, got {max_passes!r}")
    up = np.asarray(vertical, dtype=np.float64)
    if up.shape != (3,) or not np.linalg.norm(up) > 0:
        raise ValueError(f"vertical must be a non-zero 3-vector, got {vertical!r}")
    up = up / np.linalg.norm(up)

    t2, t98, t, tm, cog, radius = _bet_intensities(mag, vs)
    sphere, faces = icosphere(subdivisions)
    mean_nb, incidence, edges = _mesh_operators(len(sphere), faces)

    # inward intensity profiles: samples every ``step`` mm from the vertex to d1
    step = float(min(vs.min(), 1.0))
    n1 = int(np.floor(d1_mm / step)) + 1
    n2 = int(np.floor(d1_mm / 2.0 / step)) + 1
    inv_vs = 1.0 / vs
    mag_c = np.ascontiguousarray(mag)
    sampler = _profile_extrema()
    p_min = np.empty(len(sphere))
    p_max = np.empty(len(sphere))

    def evolve(smooth_scale):
        verts = cog + radius_scale * radius * sphere
        n_smooth = int(0.75 * n_iter) if smooth_scale > 1 else 0
        for it in range(int(n_iter)):
            scale = smooth_scale if it < n_smooth else 1.0
            r_min, r_max = rmin_mm * scale, rmax_mm * scale
            e_c = 0.5 * (1.0 / r_min + 1.0 / r_max)
            f_c = 6.0 / (1.0 / r_min - 1.0 / r_max)
            normals = _vertex_normals(verts, faces, incidence)
            l_mean = float(np.linalg.norm(verts[edges[:, 0]] - verts[edges[:, 1]], axis=1).mean())
            s = mean_nb @ verts - verts
            sn_len = np.einsum("ij,ij->i", s, normals)
            s_n = sn_len[:, None] * normals
            s_t = s - s_n
            inv_r = 2.0 * np.abs(sn_len) / l_mean**2
            f2 = 0.5 * (1.0 + np.tanh(f_c * (inv_r - e_c)))
            # intensity term
            sampler(mag_c, verts, normals, inv_vs, step, n1, n2, p_min, p_max)
            i_min = np.maximum(t2, np.minimum(tm, p_min))
            i_max = np.minimum(tm, np.maximum(t, p_max))
            bt = np.clip(f + g * ((verts - cog) @ up) / radius, 0.0, 1.0) if g else f
            t_l = (i_max - t2) * bt + t2
            f3 = 2.0 * (i_min - t_l) / np.maximum(i_max - t2, 1e-12 * (t98 - t2))
            u = 0.5 * s_t + f2[:, None] * s_n + (0.05 * l_mean) * f3[:, None] * normals
            verts = verts + u
        return verts

    passes = 0
    smooth_scale = 1.0
    while True:
        verts = evolve(smooth_scale)
        passes += 1
        intersects = surface_self_intersects(verts, faces)
        if not intersects or passes >= max_passes:
            break
        smooth_scale *= 2.0
    info = {"t2": t2, "t98": t98, "t": t, "tm": tm, "cog_mm": [float(c) for c in cog],
            "radius_mm": radius, "passes": passes, "self_intersects": bool(intersects),
            "smoothness_scale": smooth_scale}
    return verts, faces, info


#: BET's f and g defaults, read by :func:`bet_mask`, which passes them to :func:`bet_surface`.
_SURFACE = keyword_defaults(bet_surface)


def bet_mask(magnitude, voxel_size, *, f=_SURFACE["f"], g=_SURFACE["g"], return_info=False, **params):
    """BET-style brain extraction (Smith, Hum Brain Mapp 2002;17:143-155): a filled mask.

    The deformable surface of :func:`bet_surface` (options ``n_iter``, ``subdivisions``,
    ``radius_scale``, ``d1_mm``, ``rmin_mm``, ``rmax_mm``, ``vertical``, ``max_passes``
    pass through) is converted into the voxels whose centres lie inside it
    (:func:`surface_to_mask`), keeping the largest component with its holes filled.

    Parameters
    ----------
    magnitude : ndarray (3D)
        Echo-averaged (T2*-weighted) magnitude.
    voxel_size : sequence of float
        Voxel size (mm).
    f : float
        Fractional intensity threshold in [0, 1]; smaller values give larger brain
        estimates (BET's ``-f``).
    g : float
        Vertical gradient of ``f`` in [−1, 1]; positive values give a larger brain at the
        bottom and a smaller one at the top (BET's ``-g``).
    return_info : bool
        Also return a JSON-serialisable dict of the intensity parameters and passes.

    Returns
    -------
    mask : ndarray of bool
        (and ``info`` when ``return_info``)
    """
    mag = _check_volume(magnitude)
    vs = _check_voxel_size(voxel_size)
    verts, faces, info = bet_surface(mag, vs, f=f, g=g, **params)
    mask = surface_to_mask(verts, faces, mag.shape, vs)
    if mask.any():
        mask = ndimage.binary_fill_holes(largest_component(mask))
    else:
        raise ValueError("bet: the surface contains no voxel centre")
    info = {"f": float(f), "g": float(g), **params, **info}
    return (mask, info) if return_info else mask

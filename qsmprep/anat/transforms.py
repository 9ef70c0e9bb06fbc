"""ITK affine transform files ↔ world (RAS, mm) matrices, their inverse, rigid-error maths, resampling.

ANTs/ITK affines live in LPS coordinates and map points of the *fixed* space to the
*moving* space; the matrices here are the same maps in RAS world coordinates (NIfTI).
:func:`resample_to` applies such a matrix with scipy (report figures; no ANTs).
"""

from __future__ import annotations

import os

import numpy as np


_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_affine(path):
    """4×4 world (RAS, mm) matrix of an ANTs/ITK affine ``.mat`` file.

    The returned matrix maps a point of the *fixed* space to the *moving* space, as the ITK
    transform does (so for ``from-GRE_to-T1w`` it maps T1w world points to GRE world points).
    """
    import ants

    tx = ants.read_transform(os.fspath(path))
    params = np.asarray(tx.parameters, dtype=float)
    centre = np.asarray(tx.fixed_parameters, dtype=float)
    mat = params[:9].reshape(3, 3)
    trans = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = mat
    lps[:3, 3] = trans + centre - mat @ centre
    return _LPS @ lps @ _LPS


def write_affine(matrix, path):
    """Write a 4×4 world (RAS) matrix (fixed → moving points) as an ITK affine ``.mat`` file."""
    import ants

    lps = _LPS @ np.asarray(matrix, dtype=float) @ _LPS
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="float", dimension=3,
                                    matrix=lps[:3, :3], offset=lps[:3, 3])
    ants.write_transform(tx, os.fspath(path))
    return os.fspath(path)


def invert_affine_file(in_file, out_file):
    """Write the inverse of an affine ``.mat`` file (e.g. ``from-T1w_to-GRE`` from ``from-GRE_to-T1w``)."""
    return write_affine(np.linalg.inv(read_affine(in_file)), out_file)


def rigid_error(estimated, truth, points=None):
    """Rotation (degrees) and translation (mm) error between two 4×4 world matrices.

    The rotation error is the angle of ``R_est · R_trueᵀ`` (after polar decomposition of the
    estimated linear part); the translation error is the largest displacement difference over
    ``points`` (N×3, mm; default: the world origin).
    """
    est, tru = np.asarray(estimated, float), np.asarray(truth, float)
    u, _, vt = np.linalg.svd(est[:3, :3])
    rot = u @ vt
    delta = rot @ tru[:3, :3].T
    angle = float(np.degrees(np.arccos(np.clip((np.trace(delta) - 1) / 2, -1, 1))))
    pts = np.zeros((1, 3)) if points is None else np.asarray(points, float).reshape(-1, 3)
    hom = np.c_[pts, np.ones(len(pts))]
    diff = hom @ est.T - hom @ tru.T
    return angle, float(np.linalg.norm(diff[:, :3], axis=1).max())


def resample_to(moving_img, reference_img, world_map=None, order=1):
    """``moving_img`` resampled on ``reference_img``'s grid; ``world_map`` maps reference world
    points to moving world points (4×4, e.g. the ``from-T1w_to-GRE`` affine of qsmprep)."""
    from scipy import ndimage

    mat = np.linalg.inv(moving_img.affine) @ (np.eye(4) if world_map is None else world_map) @ reference_img.affine
    data = np.asarray(moving_img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    out = ndimage.affine_transform(data, mat[:3, :3], offset=mat[:3, 3], output_shape=reference_img.shape[:3],
                                   order=order, mode="constant", cval=0.0)
    return out

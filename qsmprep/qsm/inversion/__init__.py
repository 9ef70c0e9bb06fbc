"""Dipole inversion: local field (ppm) to magnetic susceptibility χ (ppm).

Methods
-------
``tkd``
    Truncated k-space division with the Schweser et al. (2013) correction (:func:`tkd`).
``tikhonov``
    Closed-form L2 solution with gradient regularisation (:func:`tikhonov`).
``ilsqr``
    LSQR, fast QSM estimate, streaking artifact estimation and removal (Li et al. 2015,
    :func:`ilsqr`).
``medi`` / ``medi+0``
    Morphology enabled dipole inversion (Liu et al. 2012), optionally with the automatic
    uniform CSF zero reference (Liu et al. 2018) (:func:`medi`).
``rts``
    Rapid two-step inversion: LSMR on the well-conditioned frequencies, then TV-ADMM for
    the magic cone (Kames et al. 2018) (:func:`rts`).
``tv``
    Total-variation ADMM with closed-form k-space updates (Bilgic et al. 2014; the weighted
    and nonlinear data terms of FANSI, Milovic et al. 2018) (:func:`tv`).
``whqsm``
    Weak-harmonic QSM: nonlinear TV that fits the residual background field, harmonic
    inside the mask, jointly with χ (Milovic et al. 2019) (:func:`whqsm`).

Conventions shared by all methods: the local field is in ppm of B0 and valid inside
``mask``; ``voxel_size`` is in mm per voxel axis and ``b0_dir`` the unit B0 vector in
voxel axes (:func:`qsmprep.qsm.kernels.b0_direction`), so oblique slices and anisotropic
voxels are exact.  All operators are FFT-based (``scipy.fft``, ``workers`` threads, float32)
on the mask's bounding box zero-padded by ``pad`` voxels per side and rounded up to a fast
FFT size.  Every method returns χ (ppm, float32) that is zero outside the mask and is
*not* referenced (see :mod:`qsmprep.qsm.reference`); the mean of χ is arbitrary.

The regularisation weight ``lambda_`` always multiplies the regularisation term of a
``½‖W(Dχ − f)‖² + λ R(χ)`` objective, so a larger λ is always a smoother χ and a larger
residual.  :func:`invert` can choose λ automatically (``lambda_rule``): by the
discrepancy principle (Morozov 1966: the noise-weighted residual variance equals the
expected noise variance) or by the L-curve corner (Hansen 1992; as in Bilgic et al. 2014).

Layout (one method per module): :mod:`~qsmprep.qsm.inversion.tkd`,
:mod:`~qsmprep.qsm.inversion.tikhonov`, :mod:`~qsmprep.qsm.inversion.ilsqr`,
:mod:`~qsmprep.qsm.inversion.medi` (with :func:`edge_mask` and MEDI+0),
:mod:`~qsmprep.qsm.inversion.tv`, :mod:`~qsmprep.qsm.inversion.rts`,
:mod:`~qsmprep.qsm.inversion.whqsm`; the λ rules in
:mod:`~qsmprep.qsm.inversion.regularization`; the operators the methods share in the
private ``_operators`` and :func:`invert`'s dispatch in ``_dispatch``.  The package names
the public functions, so ``inversion.tkd`` is the function; a module's private helpers
are reached with ``from qsmprep.qsm.inversion.ilsqr import _fast_qsm``.

Each method's defaults are written once, in its function's signature;
:func:`default_parameters` reads them and :func:`invert` fills them in.
"""

from qsmprep.qsm.inversion._dispatch import (
    METHODS,
    default_parameters,
    invert,
    invert_echoes,
    method_parameters,
    uses_phase_scale,
)
from qsmprep.qsm.inversion.ilsqr import ilsqr
from qsmprep.qsm.inversion.medi import edge_mask, medi
from qsmprep.qsm.inversion.regularization import LAMBDA_RULES
from qsmprep.qsm.inversion.rts import rts
from qsmprep.qsm.inversion.tikhonov import tikhonov
from qsmprep.qsm.inversion.tkd import tkd
from qsmprep.qsm.inversion.tv import tv
from qsmprep.qsm.inversion.whqsm import whqsm

__all__ = [
    "LAMBDA_RULES",
    "METHODS",
    "default_parameters",
    "edge_mask",
    "ilsqr",
    "invert",
    "invert_echoes",
    "medi",
    "method_parameters",
    "rts",
    "tikhonov",
    "tkd",
    "tv",
    "uses_phase_scale",
    "whqsm",
]

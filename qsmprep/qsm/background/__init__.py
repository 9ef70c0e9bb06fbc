"""Background field removal: total field (ppm) to local field (ppm).

Methods
-------
``vsharp``
    Variable-radius sophisticated harmonic artifact reduction for phase data (V-SHARP;
    Wu et al. 2012, after SHARP, Schweser et al. 2011) (:func:`vsharp`).
``pdf``
    Projection onto dipole fields (Liu et al. 2011) (:func:`pdf`).
``lbv``
    Laplacian boundary value (Zhou et al. 2014), solved by multigrid-preconditioned
    conjugate gradients (:func:`lbv`).
``ismv``
    Iterative spherical mean value (Wen et al. 2014): the background inside the eroded
    mask is the function equal to its own spherical mean, with the total field on the
    shell as boundary values; its fixed point solved by conjugate gradients (:func:`ismv`).
``resharp``
    Regularisation-enabled SHARP (Sun & Wilman 2014): SHARP's deconvolution as Tikhonov
    least squares, by conjugate gradients (:func:`resharp`).

All of them share one contract (:func:`remove_background`): the total field (ppm) and a
brain mask (plus optional data weights) in, the local field (ppm, float32, zero outside)
and the mask where it is valid out.  The background field is the field of the sources
outside the mask (air, bone, sinuses, everything outside the field of view); it is
harmonic (``Δf_B = 0``) inside the mask, which is what every method exploits.  A local
field is only defined up to a constant, and any part of the true local field that is
itself harmonic inside the mask cannot be told apart from the background by any method.

Conventions (shared with :mod:`qsmprep.qsm.kernels`): arrays in voxel order,
``voxel_size`` in mm per voxel axis (anisotropic voxels are exact), ``b0_dir`` the unit B0
vector in voxel axes, FFTs through ``scipy.fft`` with ``workers`` threads in single
precision.  An optional polynomial :func:`detrend` of the result removes residual smooth
background.

One method per module: ``vsharp.py``, ``pdf.py``, ``lbv.py``, ``ismv.py``, ``resharp.py``
(LBV's multigrid preconditioner, which iSMV uses too, in ``_multigrid.py``) and
``detrend.py``; the checks, SMV grid and preconditioned CG they share in ``_common.py``.
Each option's default is in the signature of the method's function;
:func:`default_parameters` reads them from there.
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm._params import jsonable, keyword_defaults
from qsmprep.qsm.background._common import _number
from qsmprep.qsm.background.detrend import detrend
from qsmprep.qsm.background.ismv import _ismv, ismv
from qsmprep.qsm.background.lbv import _lbv, lbv
from qsmprep.qsm.background.pdf import _pdf, pdf
from qsmprep.qsm.background.resharp import _resharp, resharp
from qsmprep.qsm.background.vsharp import smv_valid_masks, vsharp, vsharp_radii

__all__ = ["METHODS", "default_parameters", "detrend", "ismv", "lbv", "method_parameters", "pdf",
           "remove_background", "resharp", "smv_valid_masks", "vsharp", "vsharp_radii"]

#: Background removal methods :func:`remove_background` accepts.
METHODS = ("vsharp", "pdf", "lbv", "ismv", "resharp")

#: Each method's public function; its keyword defaults are the method's defaults.
_METHOD_FUNCTIONS = {"vsharp": vsharp, "pdf": pdf, "lbv": lbv, "ismv": ismv, "resharp": resharp}


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"unknown background removal method {method!r}; use one of {', '.join(METHODS)}")


def _options(method):
    """Keyword options (with defaults) of a method's public function."""
    return keyword_defaults(_METHOD_FUNCTIONS[method], exclude=("weights", "workers"))


def method_parameters(method):
    """Names of the keyword options :func:`remove_background` accepts for ``method``."""
    _check_method(method)
    return set(_options(method)) | {"detrend_order"}


def default_parameters(method):
    """Every option of :func:`method_parameters` with its default, from the signatures.

    The method's own options come from its function's signature (:func:`vsharp`,
    :func:`pdf`, :func:`lbv`), ``detrend_order`` from :func:`remove_background`'s.
    """
    _check_method(method)
    return {**_options(method), "detrend_order": keyword_defaults(remove_background)["detrend_order"]}


def remove_background(field, mask, voxel_size, *, method="vsharp", b0_dir=(0, 0, 1), weights=None,
                      detrend_order=None, workers=None, **params):
    """Total field to local field with one of :data:`METHODS`.

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    method : {"vsharp", "pdf", "lbv", "ismv", "resharp"}
        :func:`vsharp` (Wu et al. 2012), :func:`pdf` (Liu et al. 2011), :func:`lbv`
        (Zhou et al. 2014), :func:`ismv` (Wen et al. 2014) or :func:`resharp` (Sun &
        Wilman 2014).
    b0_dir : sequence of 3 float
        B0 direction in voxel axes (used by ``pdf``).
    weights : ndarray, optional
        Data weights (used by ``pdf``; ignored by the others, which have no data term).
    detrend_order : int, optional
        If given, subtract a polynomial of this total degree fitted in the valid mask
        (:func:`detrend`); off by default.
    workers : int, optional
        Threads.
    **params
        Keyword options of the method's function.

    Returns
    -------
    local : ndarray of float32
        Local field (ppm) with zero mean inside ``valid``, zero outside it.
    valid : ndarray of bool
        Where the local field is valid (the eroded mask).
    info : dict
        JSON-serialisable: ``method``, every option of the method actually used (defaults
        filled in), ``detrend_order``, ``weighted`` and solver diagnostics.
    """
    _check_method(method)
    options = _options(method)
    unknown = sorted(set(params) - set(options))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {method!r}; "
                         f"valid: {', '.join(sorted(options))}")
    if detrend_order is not None:
        detrend_order = _number("detrend_order", detrend_order, integer=True, low=0)
    used = {**options, **params}
    extra = {}
    if method == "vsharp":
        vs = tuple(float(v) for v in np.ravel(voxel_size))
        if len(vs) == 3 and min(vs) > 0:
            extra["radii_mm"] = vsharp_radii(vs, radius_max_mm=used["radius_max_mm"],
                                             radius_min_mm=used["radius_min_mm"],
                                             radius_step_mm=used["radius_step_mm"])
        local, valid = vsharp(field, mask, voxel_size, workers=workers, **params)
    elif method == "pdf":
        local, valid, extra = _pdf(field, mask, voxel_size, b0_dir, weights=weights, workers=workers, **used)
        used["b0_dir"] = [float(v) for v in np.ravel(b0_dir)]
    elif method == "lbv":
        local, valid, extra = _lbv(field, mask, voxel_size, workers=workers, **used)
    elif method == "ismv":
        local, valid, extra = _ismv(field, mask, voxel_size, workers=workers, **used)
    else:
        local, valid, extra = _resharp(field, mask, voxel_size, workers=workers, **used)
    if detrend_order is not None:
        local = detrend(local, valid, order=detrend_order)
    local = np.where(valid, local - local[valid].mean(), 0).astype(np.float32)
    info = {"method": method, **{k: jsonable(v) for k, v in used.items()}, "detrend_order": detrend_order,
            "weighted": bool(weights is not None and method == "pdf"),
            **{k: jsonable(v) for k, v in extra.items()}}
    return local, valid, info

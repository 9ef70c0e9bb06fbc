"""The demo phantom's physics: dipole field, phantom rendering, multi-echo GRE signal and T1w
(qsm-forward's forward model; see :mod:`qsmprep.demo`)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from qsmprep.demo.anatomy import (
    B0, BRAIN_LABELS, DEMO_LABELS, Phantom, SIZES, TR, FLIP, _FIELD_EXTENSION_MM, _M0, _T1W, _head_coords, _labels_at, _lut_array, _rotation, _subject_variation, grid_affine,
    chi_sources, r2_of,
)


def dipole_field(chi, voxel_size, b0_dir, *, outside=0.0):
    """Field (ppm) of χ by dipole convolution on a grid padded to twice its size with ``outside``.

    The same forward model as ``qsm_forward.generate_field`` (which pads with the corner
    voxel), written with real FFTs in float64 to fit the 1 mm phantom in memory, and with
    the usual ``D(0) = 0`` (qsm-forward's kernel has ``D(0) = 1/3``, a constant offset).

    Parameters
    ----------
    chi : ndarray, 3D
        Susceptibility (ppm).
    voxel_size : sequence of 3 float
        Voxel size (mm); isotropic for the phantom.
    b0_dir : sequence of 3 float
        Unit B0 vector in voxel axes.
    outside : float
        χ of the padding (the medium around the grid): air (9.4) for the total field.

    Returns
    -------
    ndarray of float32
        Field in ppm of B0, on the grid of ``chi``.
    """
    import scipy.fft as sfft

    from qsmprep.qsm.kernels import dipole_kernel, resolve_workers

    workers = resolve_workers(None)
    shape = tuple(sfft.next_fast_len(2 * n, real=True) for n in chi.shape)
    padded = np.full(shape, outside, dtype=np.float64)
    padded[: chi.shape[0], : chi.shape[1], : chi.shape[2]] = chi
    kernel = dipole_kernel(shape, voxel_size, b0_dir, rfft=True)
    spectrum = sfft.rfftn(padded, workers=workers)
    del padded
    spectrum *= kernel
    del kernel
    field = sfft.irfftn(spectrum, s=shape, workers=workers)
    return field[: chi.shape[0], : chi.shape[1], : chi.shape[2]].astype(np.float32)


def _block_mean(x, ss):
    """Mean over ``ss``×``ss``×``ss`` blocks (the first three axes)."""
    if ss == 1:
        return x
    n0, n1, n2 = (n // ss for n in x.shape[:3])
    return x.reshape(n0, ss, n1, ss, n2, ss, *x.shape[3:]).mean(axis=(1, 3, 5))


def make_phantom(size="small", *, seed=0, oblique_deg=0.0, motion=None, chi_scale=None):
    """Render the phantom on the GRE grid and compute its fields.

    Parameters
    ----------
    size : {"small", "full"}
        ``small``: 3 mm isotropic, 72×72×48, 4 echoes; ``full``: 1 mm, 224×224×144, 8 echoes.
    seed : int
        Subject seed (head pose, deep-grey χ within ±10 %).
    oblique_deg : float
        Tilt of the acquisition grid about x; B0 (world z) is then oblique in voxel axes.
    motion : sequence of 6 float, optional
        ``(rx, ry, rz deg, tx, ty, tz mm)``: the head moved as in :func:`render_t1w` (another
        session's position).
    chi_scale : dict, optional
        ``{label: factor}``: those labels' χ (and χ⁺, χ⁻) scaled, e.g. a haemorrhage that grew
        by a later session.

    Returns
    -------
    Phantom
        Ground truth on the GRE grid (conventions in the module docstring).

    Notes
    -----
    The ``small`` phantom is computed on a grid twice as fine (1.5 mm) and the complex
    signal is averaged over each 3 mm voxel by :func:`simulate_gre`, so voxels with strong
    field gradients (next to the skull and sinuses) lose magnitude by intravoxel
    dephasing, as real data do.  The truth maps are the voxel means of the fine maps.
    """
    from qsmprep.qsm.kernels import b0_direction

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    vs, shape, tes, _ = SIZES[size]
    affine = grid_affine(shape, vs, oblique_deg=oblique_deg)
    ss = 2 if size == "small" else 1
    fvs = vs / ss
    fshape = tuple(n * ss for n in shape)
    # fine grid: same field of view, voxel centres at the sub-voxel centres
    faffine = affine.copy()
    faffine[:3, :3] = affine[:3, :3] / ss
    faffine[:3, 3] = affine[:3, 3] - affine[:3, :3] @ np.full(3, 0.5 - 0.5 / ss)
    transform, factors = _subject_variation(seed)
    if motion is not None:
        transform = _moved(transform, motion)
    factors = dict(factors)
    for lab, scale in (chi_scale or {}).items():
        factors[lab] = factors.get(lab, 1.0) * float(scale)
    chi_lut = _lut_array({lab: v[2] * factors.get(lab, 1.0) for lab, v in DEMO_LABELS.items()})
    r2_lut = _lut_array({lab: v[3] for lab, v in DEMO_LABELS.items()})
    m0_lut = _lut_array(_M0)
    para_lut = _lut_array({lab: chi_sources(lab, factors.get(lab, 1.0))[0] for lab in DEMO_LABELS})
    dia_lut = _lut_array({lab: chi_sources(lab, factors.get(lab, 1.0))[1] for lab in DEMO_LABELS})
    r2se_lut = _lut_array({lab: r2_of(lab, factors.get(lab, 1.0)) for lab in DEMO_LABELS})

    # render on the fine grid extended below the FOV (k axis), where the head continues
    ext = int(np.ceil(_FIELD_EXTENSION_MM / fvs))
    ext_shape = (fshape[0], fshape[1], fshape[2] + ext)
    ext_affine = faffine.copy()
    ext_affine[:3, 3] -= ext * faffine[:3, 2]
    labels_ext = _labels_at(*_head_coords(ext_affine, ext_shape, transform))
    b0_dir = b0_direction(affine)
    total_fine = dipole_field(chi_lut[labels_ext], (fvs,) * 3, b0_dir, outside=float(chi_lut[0]))[..., ext:]
    labels_fine = labels_ext[..., ext:]
    del labels_ext
    chi_fine = chi_lut[labels_fine]
    brain_fine = np.isin(labels_fine, BRAIN_LABELS)
    local_fine = dipole_field(chi_fine * brain_fine, (fvs,) * 3, b0_dir, outside=0.0)
    m0_fine, r2_fine = m0_lut[labels_fine], r2_lut[labels_fine]

    # the GRE grid: labels at voxel centres, maps as voxel means
    labels = _labels_at(*_head_coords(affine, shape, transform)) if ss > 1 else labels_fine
    brain = np.isin(labels, BRAIN_LABELS)
    # χ truth: inside the brain the voxel mean of brain tissue only (the sources of the
    # local field; bone partial volume at the brain's edge belongs to the background),
    # elsewhere the voxel mean of everything
    brain_frac = _block_mean(brain_fine.astype(np.float32), ss)
    chi_brain = _block_mean(chi_fine * brain_fine, ss) / np.maximum(brain_frac, 1e-6)
    chi = np.where(brain, chi_brain, _block_mean(chi_fine, ss))

    def brain_mean(lut):  # the χ-separation truth as χ: brain tissue only inside the brain
        vals = lut[labels_fine]
        inside = _block_mean(vals * brain_fine, ss) / np.maximum(brain_frac, 1e-6)
        return np.where(brain, inside, _block_mean(vals, ss)).astype(np.float32)

    chi_para, chi_dia = brain_mean(para_lut), brain_mean(dia_lut)
    r2 = _block_mean(r2se_lut[labels_fine], ss).astype(np.float32)
    total = _block_mean(total_fine, ss)
    local_raw = _block_mean(local_fine, ss)
    local = local_raw - local_raw[brain].mean()
    background = total - local_raw
    background -= background[brain].mean()
    lut = {lab: (v[0], v[1], float(chi_lut[lab]), v[3]) for lab, v in DEMO_LABELS.items()}
    phantom = Phantom(
        chi=chi.astype(np.float32), labels=labels, brain_mask=brain, m0=_block_mean(m0_fine, ss).astype(np.float32),
        r2star=_block_mean(r2_fine, ss).astype(np.float32), total_field=total.astype(np.float32),
        local_field=local.astype(np.float32), background_field=background.astype(np.float32), affine=affine,
        voxel_size=(vs, vs, vs), b0=B0, b0_dir=b0_dir, tes=np.asarray(tes, dtype=np.float64), lut=lut,
        chi_para=chi_para, chi_dia=chi_dia, r2=r2,
    )
    phantom.fine = {"ss": ss, "m0": m0_fine, "r2star": r2_fine, "total_field": total_fine, "chi": chi_fine,
                    "brain": brain_fine}
    return phantom


def simulate_gre(phantom, *, snr=100.0, seed=0):
    """Complex multi-echo signal (x, y, z, echo) and the receive phase offset used.

    qsm-forward's ``generate_signal`` per echo (R1 = 1/s everywhere, TR 35 ms, 15°) on the
    phantom's fine grid, averaged over each voxel (intravoxel dephasing), a smooth
    quadratic receive phase offset over the head (``generate_phase_offset``), and complex
    Gaussian noise with std = max|signal| / ``snr`` (``add_noise``).

    Parameters
    ----------
    phantom : Phantom
        From :func:`make_phantom`.
    snr : float
        Peak SNR: noise std (real and imaginary) is ``max|signal| / snr``.
    seed : int
        Noise seed (``np.random.default_rng(seed + 1000)``).

    Returns
    -------
    signal : ndarray of complex64, shape (x, y, z, echo)
        ``M0 · SPGR(TR, 15°) · exp(−TE R2*) · exp(i (2π · 42.58 · B0 · total_field · TE + φ0))``
        plus noise (``generate_signal`` uses 42.58 MHz/T).
    phase_offset : ndarray of float32, shape (x, y, z)
        The receive phase φ0 (rad), non-zero in the brain.
    """
    from qsm_forward import add_noise, generate_phase_offset, generate_signal

    rng = np.random.default_rng(seed + 1000)
    fine = getattr(phantom, "fine", None) or {
        "ss": 1, "m0": phantom.m0, "r2star": phantom.r2star, "total_field": phantom.total_field,
    }
    ss = fine["ss"]
    head = phantom.m0 > 0
    offset = generate_phase_offset(phantom.m0, head, phantom.chi.shape).astype(np.float32)
    offset_fine = np.repeat(np.repeat(np.repeat(offset, ss, 0), ss, 1), ss, 2) if ss > 1 else offset
    sig = np.empty(phantom.chi.shape + (len(phantom.tes),), dtype=np.complex64)
    for e, te in enumerate(phantom.tes):
        s = generate_signal(
            field=fine["total_field"], B0=phantom.b0, TR=TR, TE=float(te), flip_angle=FLIP,
            phase_offset=offset_fine, R1=1.0, R2star=fine["r2star"], M0=fine["m0"],
        )
        sig[..., e] = _block_mean(s, ss)
    sig = add_noise(sig, peak_snr=snr, rng=rng).astype(np.complex64)
    return sig, offset


def render_t1w(size="small", *, seed=0, t1w_motion=None):
    """T1w-like image of subject ``seed`` on its own grid, not skull-stripped.

    Parameters
    ----------
    size : {"small", "full"}
        ``small``: 2 mm isotropic 108×108×72; ``full``: 1 mm 224×224×144 (the GRE field of
        view, axis-aligned).
    seed : int
        Subject seed: the same anatomy (pose) as ``make_phantom(size, seed=seed)``.
    t1w_motion : sequence of 6 float, optional
        ``(rx_deg, ry_deg, rz_deg, tx_mm, ty_mm, tz_mm)``: the anatomy is moved by this
        rigid transform, ``x' = R x + t`` with ``R = Rz Ry Rx`` about the world origin,
        applied after the subject's pose.

    Returns
    -------
    nibabel.Nifti1Image
        float32, intensities ≈ 0..1000 (WM 900, GM 600, deep grey 700, CSF 150, scalp 800),
        with a smooth multiplicative bias field and Gaussian noise (std 20).
    """
    vs, shape, _, t1_vs = SIZES[size]
    t1_shape = tuple(int(round(n * vs / t1_vs)) for n in shape)
    affine = grid_affine(t1_shape, t1_vs)
    (rot, shift), _ = _subject_variation(seed)
    if t1w_motion is not None:
        m_rot = _rotation(*t1w_motion[:3])
        rot, shift = m_rot @ rot, m_rot @ shift + np.asarray(t1w_motion[3:], dtype=float)
    coords = _head_coords(affine, t1_shape, (rot, shift))
    labels = _labels_at(*coords)
    img = _lut_array(_T1W)[labels]
    rng = np.random.default_rng(seed + 2000)
    x, y, z = (c / 100.0 for c in coords)
    bias = 1.0 + 0.15 * x - 0.1 * y + 0.1 * z * z
    img = img * bias + 0.02 * rng.standard_normal(t1_shape).astype(np.float32)
    img = np.clip(img, 0, None) * 1000
    return nib.Nifti1Image(img.astype(np.float32), affine)


def t1w_labels(size, seed, affine, shape, motion=None):
    """Ground-truth labels of demo subject ``seed`` rendered on a T1w grid (``affine``, ``shape``).

    ``motion`` (rx, ry, rz in degrees, tx, ty, tz in mm) moves the head as in
    :func:`render_t1w`.  This is the demo's subject "segmentation" in T1w space.
    """
    transform, _ = _subject_variation(seed)
    if motion is not None:
        transform = _moved(transform, motion)
    return _labels_at(*_head_coords(affine, shape, transform))


def _moved(transform, motion):
    """A head pose ``(rot, shift)`` moved by ``motion`` (rx, ry, rz deg, tx, ty, tz mm) about the world origin."""
    rot, shift = transform
    m_rot = _rotation(*motion[:3])
    return m_rot @ rot, m_rot @ shift + np.asarray(motion[3:], dtype=float)


def render_r2(size, seed, affine, shape, motion=None):
    """R2 map (1/s) of demo subject ``seed`` on a grid (``affine``, ``shape``): the R2 a spin-echo
    acquisition of the session would measure (:func:`qsmprep.demo.anatomy.r2_of` per label)."""
    _, factors = _subject_variation(seed)
    lut = _lut_array({lab: r2_of(lab, factors.get(lab, 1.0)) for lab in DEMO_LABELS})
    return lut[t1w_labels(size, seed, affine, shape, motion=motion)]

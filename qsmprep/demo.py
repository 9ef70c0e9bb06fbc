"""Realistic multi-echo GRE head phantom and demo BIDS dataset with known ground truth.

The anatomy is analytic (ellipsoids, shells with gyral folding, a cylinder, a sphere) and
defined in continuous world coordinates (mm, RAS+), so it can be rendered on any grid:
an oblique GRE acquisition, or a T1w moved by a known rigid transform.  The MR physics
is qsm-forward's forward model (Stewart et al., MRM 2022; ``qsm_forward.generate_field``,
``generate_signal``, ``add_noise``, ``generate_phase_offset``):

* χ (ppm, relative to water/CSF) of every tissue including the skull (−2.0 ppm) and air
  (+9.4 ppm) inside the sinuses and all around the head, so the total field has a real,
  strong background component; the field is the dipole convolution of χ on a grid padded
  with air, as ``qsm_forward.generate_field`` does (:func:`dipole_field` is a memory-lean
  equivalent, tested against it), computed on the GRE grid extended 64 mm below the FOV
  where head and neck continue, so the FOV edge is not a false tissue/air interface;
* complex multi-echo signal ``M0 · exp(−TE·R2*) · exp(i(2π γ̄ B0 Δχ TE + φ0))`` with a
  smooth receive phase offset φ0 and complex Gaussian noise at a given peak SNR;
* Siemens-style integer output: magnitude uint16 (max ≈ 4000) and phase 0..4095 for [−π, π).

Ground-truth conventions (``Phantom``):

* ``total_field``: the field used to simulate the signal (ppm), not demeaned;
* ``local_field``: the dipole field of χ·brain_mask alone (no sources outside the brain),
  demeaned inside the brain mask;
* ``background_field``: ``total − local`` (the field of everything outside the brain),
  demeaned inside the brain mask.
* ``chi``: inside the brain mask the voxel mean of brain tissue χ only (bone partial
  volume at the brain's edge is background), elsewhere the voxel mean of all tissue;
* ``brain_mask``: CSF inside the skull (subarachnoid and ventricles), GM, WM, the deep
  grey nuclei, the vein and the calcification (labels in :data:`BRAIN_LABELS`).

Only isotropic voxels are generated: qsm-forward's dipole kernel assumes them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

LOGGER = logging.getLogger("nipype.workflow")

#: label -> (name, hemisphere, χ ppm, R2* 1/s)
DEMO_LABELS = {
    0: ("air", "", 9.4, 0.0),
    1: ("scalp", "", 0.3, 30.0),
    2: ("skull", "", -2.0, 300.0),
    3: ("sinus air", "", 9.4, 0.0),
    4: ("CSF", "", 0.0, 4.0),
    5: ("grey matter", "", 0.02, 17.0),
    6: ("white matter", "", -0.03, 21.0),
    7: ("lateral ventricle", "L", 0.0, 4.0),
    8: ("lateral ventricle", "R", 0.0, 4.0),
    11: ("caudate", "L", 0.07, 25.0),
    12: ("caudate", "R", 0.07, 25.0),
    13: ("putamen", "L", 0.06, 28.0),
    14: ("putamen", "R", 0.06, 28.0),
    15: ("globus pallidus", "L", 0.17, 40.0),
    16: ("globus pallidus", "R", 0.17, 40.0),
    17: ("thalamus", "L", 0.03, 20.0),
    18: ("thalamus", "R", 0.03, 20.0),
    19: ("red nucleus", "L", 0.12, 32.0),
    20: ("red nucleus", "R", 0.12, 32.0),
    21: ("substantia nigra", "L", 0.14, 42.0),
    22: ("substantia nigra", "R", 0.14, 42.0),
    30: ("vein", "", 0.35, 40.0),
    31: ("calcification", "", -0.3, 200.0),
}
DEEP_GREY_LABELS = list(range(11, 23))


def label_name(label):
    """``"caudate L"``-style display name of a demo label."""
    name, hemi = DEMO_LABELS[label][:2]
    return f"{name} {hemi}".strip()


BRAIN_LABELS = (4, 5, 6, 7, 8, *DEEP_GREY_LABELS, 30, 31)
SKULL_AND_AIR_LABELS = (0, 2, 3)
#: proton density (GRE M0) and T1w intensity per label
_M0 = {0: 0.0, 1: 0.9, 2: 0.05, 3: 0.0, 4: 1.0, 5: 0.8, 6: 0.7, 7: 1.0, 8: 1.0, 30: 0.5, 31: 0.2}
_T1W = {0: 0.0, 1: 0.8, 2: 0.05, 3: 0.0, 4: 0.15, 5: 0.6, 6: 0.9, 7: 0.15, 8: 0.15, 30: 0.4, 31: 0.1}
for _lab in DEEP_GREY_LABELS:
    _M0[_lab] = 0.72 if _lab < 19 else 0.66
    _T1W[_lab] = 0.7

#: grids: (voxel size mm, GRE matrix, echo times s, T1w voxel size mm)
SIZES = {
    "small": (3.0, (72, 72, 48), (0.004, 0.009, 0.014, 0.019), 2.0),
    "full": (1.0, (224, 224, 144), tuple(0.004 + 0.004 * i for i in range(8)), 1.0),
}
B0 = 3.0
TR, FLIP = 0.035, 15.0

# Anatomy in the head frame (mm, RAS+: x right, y anterior, z superior).
_SCALP = ((0.0, 0.0, -5.0), (78.0, 98.0, 80.0))
_SKULL_OUT = ((0.0, 0.0, -5.0), (72.0, 92.0, 74.0))
_SKULL_IN = ((0.0, 0.0, -5.0), (66.0, 86.0, 68.0))
_BRAIN = ((0.0, 0.0, 6.0), (63.0, 83.0, 58.0))
_NECK = ((0.0, -5.0), (52.0, 62.0), -30.0)   # (x, y) centre, semi-axes, top z: soft tissue below
#: the field is computed on the GRE grid extended this far below the FOV (the head and
#: neck continue there), so the FOV edge does not act as a tissue/air interface
_FIELD_EXTENSION_MM = 64.0
_SINUSES = [((0.0, 80.0, -35.0), (14.0, 8.0, 10.0)),      # frontal sinus
            ((-61.0, -2.0, -40.0), (7.0, 8.0, 7.0)),       # mastoid air cells L
            ((61.0, -2.0, -40.0), (7.0, 8.0, 7.0))]        # mastoid air cells R
# (label left, label right, centre of the left one, semi-axes); right = mirror in x
_PAIRED = [
    (7, 8, (-11.0, 4.0, 16.0), (5.5, 22.0, 8.0)),
    (13, 14, (-25.0, 3.0, 2.0), (5.0, 13.0, 9.0)),
    (15, 16, (-18.5, 0.0, 0.0), (3.5, 8.0, 5.0)),
    (11, 12, (-13.5, 14.0, 12.0), (4.5, 9.0, 7.0)),
    (17, 18, (-10.0, -16.0, 6.0), (7.0, 13.0, 8.0)),
    (21, 22, (-10.0, -17.0, -16.0), (3.0, 7.0, 2.5)),
    (19, 20, (-5.0, -21.0, -10.0), (3.0, 3.5, 3.5)),
]
_VEIN = ((0.0, 48.0), (-65.0, 35.0), 2.5)   # (x, z) of the axis, y range, radius: along y
_CALC = ((22.0, 28.0, 32.0), 3.0)


@dataclass
class Phantom:
    """Ground truth of one phantom acquisition; arrays in voxel order of the GRE grid.

    Attributes
    ----------
    chi : ndarray of float32
        Susceptibility (ppm, relative to water/CSF); +9.4 in air, −2.0 in bone.
    labels : ndarray of int16
        Tissue label at each voxel centre (see :data:`DEMO_LABELS`).
    brain_mask : ndarray of bool
        ``isin(labels, BRAIN_LABELS)``.
    m0, r2star : ndarray of float32
        Proton density (a.u.) and R2* (1/s), voxel means.
    total_field, local_field, background_field : ndarray of float32
        Fields in ppm of B0 (conventions in the module docstring).
    affine : ndarray (4, 4)
        GRE grid affine (RAS+ mm), centred on the world origin, tilted by ``oblique_deg``.
    voxel_size : tuple of float
        Isotropic voxel size (mm).
    b0 : float
        Field strength (T).
    b0_dir : ndarray (3,)
        Unit B0 vector (world +z) in voxel axes, ``R⁻¹ (0, 0, 1)``.
    tes : ndarray
        Echo times (s).
    lut : dict
        ``label -> (name, hemisphere, χ ppm, R2* 1/s)`` of this subject (deep-grey χ
        scaled by the subject's factor).
    fine : dict
        Fine-grid maps used by :func:`simulate_gre` (``ss`` sub-voxels per axis).
    """

    chi: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    m0: np.ndarray
    r2star: np.ndarray
    total_field: np.ndarray
    local_field: np.ndarray
    background_field: np.ndarray
    affine: np.ndarray
    voxel_size: tuple
    b0: float
    b0_dir: np.ndarray
    tes: np.ndarray
    lut: dict = field(default_factory=dict)
    #: fine-grid maps used by :func:`simulate_gre` (sub-voxel factor ``ss``)
    fine: dict = field(default_factory=dict, repr=False)


def _rotation(rx_deg, ry_deg, rz_deg):
    rx, ry, rz = np.deg2rad([rx_deg, ry_deg, rz_deg])
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def grid_affine(shape, voxel_size, *, oblique_deg=0.0):
    """Affine of a grid centred on the world origin, optionally tilted about x (oblique)."""
    rot = _rotation(oblique_deg, 0.0, 0.0)
    lin = rot @ np.diag([voxel_size] * 3)
    centre = (np.asarray(shape) - 1) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = -lin @ centre
    return aff


def _head_coords(affine, shape, transform, supersample=1):
    """Head-frame coordinates (3, N...) of (sub-)voxel centres: x_head = R⁻¹ (x_world − t)."""
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    axes = [(np.arange(n)[:, None] + offs[None, :]).ravel().astype(np.float32) for n in shape]
    ii, jj, kk = np.meshgrid(*axes, indexing="ij")
    rot, shift = transform
    lin = rot.T @ affine[:3, :3]
    off = rot.T @ (affine[:3, 3] - shift)
    return [
        (lin[r, 0] * ii + lin[r, 1] * jj + lin[r, 2] * kk + off[r]).astype(np.float32) for r in range(3)
    ]


def _ellipsoid(x, y, z, centre, semi):
    return (((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
            + ((z - centre[2]) / semi[2]) ** 2)


def _folding(x, y, z, centre):
    """Smooth angular pattern in [−1, 1] that folds the cortex (gyri and sulci)."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    theta = np.arccos(np.clip(dz / r, -1, 1))
    phi = np.arctan2(dy, dx)
    g = (0.5 * np.sin(9 * theta) * np.cos(7 * phi) + 0.3 * np.sin(13 * theta + 1.0) * np.sin(11 * phi)
         + 0.2 * np.cos(17 * theta) * np.cos(5 * phi + 0.5))
    return g.astype(np.float32)


def _labels_at(x, y, z):
    """Integer tissue labels at head-frame coordinates."""
    lab = np.zeros(x.shape, dtype=np.int16)
    (nx, ny), (na, nb), ntop = _NECK
    lab[(((x - nx) / na) ** 2 + ((y - ny) / nb) ** 2 <= 1) & (z <= ntop)] = 1
    lab[_ellipsoid(x, y, z, *_SCALP) <= 1] = 1
    lab[_ellipsoid(x, y, z, *_SKULL_OUT) <= 1] = 2
    lab[_ellipsoid(x, y, z, *_SKULL_IN) <= 1] = 4
    rho = np.sqrt(_ellipsoid(x, y, z, *_BRAIN))
    fold = _folding(x, y, z, _BRAIN[0])
    lab[rho <= 1.0 - 0.035 * (1 + fold)] = 5            # cortex surface with sulci (CSF)
    lab[rho <= 0.88 + 0.05 * fold] = 6                  # GM/WM boundary with gyral folding
    for centre, semi in _SINUSES:
        lab[_ellipsoid(x, y, z, centre, semi) <= 1] = 3
    for left, right, centre, semi in _PAIRED:
        lab[_ellipsoid(x, y, z, centre, semi) <= 1] = left
        lab[_ellipsoid(x, y, z, (-centre[0], centre[1], centre[2]), semi) <= 1] = right
    (vx, vz), (y0, y1), radius = _VEIN
    lab[((x - vx) ** 2 + (z - vz) ** 2 <= radius**2) & (y >= y0) & (y <= y1)] = 30
    centre, radius = _CALC
    lab[_ellipsoid(x, y, z, centre, (radius,) * 3) <= 1] = 31
    return lab


def _subject_variation(seed):
    """Per-subject head pose and deep-grey χ factors (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-3.0, 3.0, size=3)
    angles = rng.uniform(-3.0, 3.0, size=3)
    factors = {lab: float(rng.uniform(0.9, 1.1)) for lab in DEEP_GREY_LABELS}
    return (_rotation(*angles), shift), factors


def _lut_array(values, default=0.0):
    arr = np.full(max(DEMO_LABELS) + 1, default, dtype=np.float32)
    for lab, val in values.items():
        arr[lab] = val
    return arr


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


def make_phantom(size="small", *, seed=0, oblique_deg=0.0):
    """Render the phantom on the GRE grid and compute its fields.

    Parameters
    ----------
    size : {"small", "full"}
        ``small``: 3 mm isotropic, 72×72×48, 4 echoes; ``full``: 1 mm, 224×224×144, 8 echoes.
    seed : int
        Subject seed (head pose, deep-grey χ within ±10 %).
    oblique_deg : float
        Tilt of the acquisition grid about x; B0 (world z) is then oblique in voxel axes.

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
    chi_lut = _lut_array({lab: v[2] * factors.get(lab, 1.0) for lab, v in DEMO_LABELS.items()})
    r2_lut = _lut_array({lab: v[3] for lab, v in DEMO_LABELS.items()})
    m0_lut = _lut_array(_M0)

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


def _write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def write_demo_dataset(out_dir, *, size="small", n_subjects=2, seed=0, snr=100.0, oblique_deg=0.0,
                       overwrite=False):
    """Write the demo BIDS dataset to ``out_dir/bids`` and the truth to ``out_dir/truth``.

    Subject ``sub-0N`` (N = 1, 2, ...) is ``make_phantom(size, seed=seed + N - 1)`` and
    ``simulate_gre(..., snr=snr, seed=seed + N - 1)``.  BIDS: ``dataset_description.json``,
    ``participants.tsv``, ``README``, per echo ``anat/sub-0N_echo-<e>_part-{mag,phase}_MEGRE``
    (magnitude uint16 scaled so the maximum over all echoes is 4000; phase uint16
    ``round((φ + π) / 2π · 4096) mod 4096``, Siemens-style) with JSON sidecars, and
    ``anat/sub-0N_T1w``.  Truth (outside the BIDS tree, GRE grid): ``truth/sub-0N/sub-0N_``
    ``Chimap``, ``dseg`` (+ ``.tsv`` with this subject's χ), ``desc-brain_mask``,
    ``desc-{total,local,background}field_fieldmap`` (ppm) and ``R2starmap`` (1/s), and the
    nominal look-up table ``truth/dseg.tsv``.

    Parameters
    ----------
    out_dir : str or Path
        Parent folder of ``bids`` and ``truth``.
    size : {"small", "full"}
    n_subjects : int
    seed : int
        Seed of the first subject.
    snr : float
        Peak SNR of the complex signal.
    oblique_deg : float
        Tilt of the GRE grid about x.
    overwrite : bool
        Replace an existing non-empty ``out_dir/bids`` (and ``out_dir/truth``); otherwise
        :class:`FileExistsError` is raised.

    Returns
    -------
    dict
        ``bids_dir``, ``truth_dir`` and ``subjects``: ``{"01": {"Chimap": path, ...}, ...}``
        (keys ``Chimap``, ``dseg``, ``dseg_tsv``, ``desc-brain_mask``,
        ``desc-totalfield_fieldmap``, ``desc-localfield_fieldmap``,
        ``desc-backgroundfield_fieldmap``, ``R2starmap``).
    """
    out_dir = Path(out_dir)
    bids, truth = out_dir / "bids", out_dir / "truth"
    if bids.exists() and any(bids.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{bids} already exists and is not empty (use overwrite / --overwrite)")
        shutil.rmtree(bids)
        shutil.rmtree(truth, ignore_errors=True)
    bids.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    _write_json(bids / "dataset_description.json", {
        "Name": f"qsmprep demo phantom ({size})", "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "qsmprep.demo", "Description": "analytic head phantom, qsm-forward forward model"}],
    })
    (bids / "README").write_text(
        "Synthetic multi-echo GRE head phantom made by qsmprep.demo with qsm-forward's forward model.\n"
        "Ground truth (chi, labels, mask, fields, R2*) is in ../truth, outside this dataset.\n"
    )
    subjects = [f"{i + 1:02d}" for i in range(n_subjects)]
    (bids / "participants.tsv").write_text(
        "participant_id\tspecies\n" + "".join(f"sub-{s}\thomo sapiens (phantom)\n" for s in subjects)
    )
    result = {"bids_dir": str(bids), "truth_dir": str(truth), "subjects": {}}
    for i, sub in enumerate(subjects):
        sub_seed = seed + i
        ph = make_phantom(size, seed=sub_seed, oblique_deg=oblique_deg)
        sig, _ = simulate_gre(ph, snr=snr, seed=sub_seed)
        anat = bids / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        mag = np.abs(sig)
        mag_int = np.rint(mag / mag.max() * 4000).astype(np.uint16)
        phase_int = (np.rint((np.angle(sig) + np.pi) / (2 * np.pi) * 4096).astype(np.int64) % 4096).astype(np.uint16)
        for e, te in enumerate(ph.tes, start=1):
            for part, data in (("mag", mag_int[..., e - 1]), ("phase", phase_int[..., e - 1])):
                stem = anat / f"sub-{sub}_echo-{e}_part-{part}_MEGRE"
                nib.Nifti1Image(data, ph.affine).to_filename(f"{stem}.nii.gz")
                _write_json(f"{stem}.json", {
                    "EchoTime": round(float(te), 6), "EchoNumber": e, "MagneticFieldStrength": ph.b0,
                    "Manufacturer": "Siemens", "RepetitionTime": TR, "FlipAngle": FLIP,
                    "ImageType": ["ORIGINAL", "PRIMARY", "M" if part == "mag" else "P", "ND"],
                })
        t1w = render_t1w(size, seed=sub_seed)
        t1w.to_filename(anat / f"sub-{sub}_T1w.nii.gz")
        _write_json(anat / f"sub-{sub}_T1w.json", {
            "MagneticFieldStrength": ph.b0, "Manufacturer": "Siemens", "MRAcquisitionType": "3D",
            "RepetitionTime": 2.3, "InversionTime": 0.9, "EchoTime": 0.00298, "FlipAngle": 9,
        })

        tdir = truth / f"sub-{sub}"
        tdir.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, data in (("Chimap", ph.chi), ("dseg", ph.labels), ("desc-brain_mask", ph.brain_mask),
                           ("desc-totalfield_fieldmap", ph.total_field),
                           ("desc-localfield_fieldmap", ph.local_field),
                           ("desc-backgroundfield_fieldmap", ph.background_field), ("R2starmap", ph.r2star)):
            arr = data.astype(np.uint8) if data.dtype == bool else data
            path = tdir / f"sub-{sub}_{name}.nii.gz"
            nib.Nifti1Image(arr, ph.affine).to_filename(path)
            files[name] = str(path)
        tsv = tdir / f"sub-{sub}_dseg.tsv"
        _write_lut(tsv, ph.lut)
        files["dseg_tsv"] = str(tsv)
        # the subject's segmentation in T1w space, as a BIDS derivatives dataset (what
        # sMRIPrep/FastSurfer would give): `--segmentation-dir truth/segmentation`
        seg_dir = truth / "segmentation" / f"sub-{sub}" / "anat"
        seg_dir.mkdir(parents=True, exist_ok=True)
        seg = t1w_labels(size, sub_seed, t1w.affine, t1w.shape)
        nib.Nifti1Image(seg.astype(np.int16), t1w.affine).to_filename(seg_dir / f"sub-{sub}_desc-phantom_dseg.nii.gz")
        _write_lut(seg_dir / f"sub-{sub}_desc-phantom_dseg.tsv", ph.lut)
        files["segmentation"] = str(seg_dir / f"sub-{sub}_desc-phantom_dseg.nii.gz")
        result["subjects"][sub] = files
        LOGGER.info("demo: wrote sub-%s (%s, %d echoes)", sub, size, len(ph.tes))
    _write_lut(truth / "dseg.tsv", DEMO_LABELS)
    _write_json(truth / "segmentation" / "dataset_description.json", {
        "Name": "qsmprep demo: phantom segmentation (T1w space)", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "qsmprep demo"}]})
    result["segmentation_dir"] = str(truth / "segmentation")
    return result


def t1w_labels(size, seed, affine, shape, motion=None):
    """Ground-truth labels of demo subject ``seed`` rendered on a T1w grid (``affine``, ``shape``).

    ``motion`` (rx, ry, rz in degrees, tx, ty, tz in mm) moves the head as in
    :func:`render_t1w`.  This is the demo's subject "segmentation" in T1w space.
    """
    (rot, shift), _ = _subject_variation(seed)
    if motion is not None:
        m_rot = _rotation(*motion[:3])
        rot, shift = m_rot @ rot, m_rot @ shift + np.asarray(motion[3:], dtype=float)
    return _labels_at(*_head_coords(affine, shape, (rot, shift)))


def _write_lut(path, lut):
    """BIDS ``dseg.tsv``: index, name, hemisphere (``n/a`` if none), χ (ppm), R2* (1/s)."""
    lines = ["index\tname\themisphere\tchi_ppm\tr2star_per_s"]
    lines += [f"{lab}\t{v[0]}\t{v[1] or 'n/a'}\t{float(v[2]):.6g}\t{float(v[3]):.6g}" for lab, v in lut.items()]
    Path(path).write_text("\n".join(lines) + "\n")

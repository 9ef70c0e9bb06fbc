"""The demo head phantom's anatomy: labels and their tissue values, the analytic geometry in
world coordinates (mm, RAS+), grids, and the :class:`Phantom` record (see :mod:`qsmprep.demo`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
    30: ("vein", "", 0.35, 60.0),
    31: ("calcification", "", -0.3, 200.0),
    32: ("haemorrhage", "", 0.4, 73.0),
    33: ("lesion iron gain", "", 0.035, 21.6),
    34: ("lesion demyelinated", "", 0.005, 13.4),
    35: ("WM lesion", "", -0.016, 19.0),
    36: ("cortical lesion", "", 0.002, 17.0),
    37: ("rim lesion core", "", -0.025, 18.5),
    38: ("rim lesion rim", "", 0.03, 27.0),
    39: ("cavernous malformation A", "", 0.3, 60.0),
    40: ("cavernous malformation B", "", 0.25, 53.0),
}
#: label -> (χ⁺, χ⁻) ppm, the paramagnetic and diamagnetic sources of each brain tissue
#: (χ⁺ + χ⁻ = the label's χ): iron-rich deep grey nuclei, myelinated (diamagnetic) white
#: matter, a diamagnetic calcification, a paramagnetic haemorrhage and venous blood, and two
#: white-matter lesions: one demyelinated with iron gain, one demyelinated without.  R2* is
#: ``R2 + D_r (χ⁺ − χ⁻)`` with D_r = 137 Hz/ppm at 3 T (Shin et al. 2021), so each brain
#: label's R2 is ``R2* − D_r (χ⁺ − χ⁻)`` (:func:`r2_of`): 10-15 1/s in tissue (Stanisz et al.
#: 2005's 3 T range), 4 in CSF, 159 in the calcification.  Outside the brain χ⁺ and χ⁻ are
#: the positive and negative parts of χ and R2 = R2* (not modelled).
CHISEP_SOURCES = {
    4: (0.0, 0.0), 7: (0.0, 0.0), 8: (0.0, 0.0),
    5: (0.035, -0.015), 6: (0.015, -0.045),
    11: (0.085, -0.015), 12: (0.085, -0.015), 13: (0.085, -0.025), 14: (0.085, -0.025),
    15: (0.18, -0.01), 16: (0.18, -0.01), 17: (0.05, -0.02), 18: (0.05, -0.02),
    19: (0.135, -0.015), 20: (0.135, -0.015), 21: (0.17, -0.03), 22: (0.17, -0.03),
    30: (0.35, 0.0), 31: (0.0, -0.3), 32: (0.4, 0.0), 33: (0.06, -0.025), 34: (0.015, -0.01),
    35: (0.02, -0.036), 36: (0.019, -0.017), 37: (0.012, -0.037), 38: (0.07, -0.04), 39: (0.3, 0.0),
    40: (0.25, 0.0),
}
#: The relaxometric constant (Hz/ppm) of the demo's R2* at its 3 T (Shin et al. 2021).
DEMO_DR = 137.0
#: demo label -> QSM-CI's segmentation label (``qsm_ci.qsm_eval``: deep grey 1-7, WM 8, GM 9,
#: CSF 10, veins 11, skull 13, air 14, other tissue 15, calcification 16, haemorrhage 17);
#: the two white-matter lesions count as white matter.
QSMCI_LABELS = {11: 1, 12: 1, 13: 3, 14: 3, 15: 2, 16: 2, 17: 7, 18: 7, 19: 4, 20: 4, 21: 6, 22: 6,
                6: 8, 5: 9, 4: 10, 7: 10, 8: 10, 30: 11, 31: 16, 2: 13, 0: 14, 3: 14, 1: 15, 32: 17, 33: 8, 34: 8,
                35: 8, 36: 9, 37: 8, 38: 8, 39: 17, 40: 17}


def qsmci_segmentation(labels):
    """QSM-CI's segmentation (int32) of a demo label image (:data:`QSMCI_LABELS`)."""
    lut = np.zeros(max(DEMO_LABELS) + 1, np.int32)
    lut[list(QSMCI_LABELS)] = list(QSMCI_LABELS.values())
    return lut[np.asarray(labels, dtype=np.int64)]
DEEP_GREY_LABELS = list(range(11, 23))
#: the χ-separation structures: haemorrhage, lesion with iron gain, demyelinated lesion
LESION_LABELS = (32, 33, 34)
#: the lesion-analysis structures (issue 20): WM lesions χ +0.014 ppm relative to WM (35;
#: also the WM part of the leukocortical lesion), cortical lesions −0.018 ppm relative to
#: cortex (36; also the leukocortical lesion's cortical part), a paramagnetic-rim lesion
#: (core 37 +0.005 ppm, rim 38 +0.060 ppm relative to WM) and two cavernous malformations
#: (39, 40; radius 5-5.5 mm: the longitudinal participant's grow by 10 % and 2 %)
MS_LESION_LABELS = (33, 34, 35, 36, 37, 38)
#: the demo's lesion ``dseg`` (``truth/lesions``): its label -> (name, demo labels)
LESION_DSEG = {1: ("MS lesion", MS_LESION_LABELS), 2: ("haemorrhage", (32,)), 3: ("cavernous malformation", (39, 40)),
               4: ("calcification", (31,))}


def chi_sources(label, factor=1.0):
    """(χ⁺, χ⁻) of a demo label (ppm), scaled by a subject's deep-grey ``factor``."""
    if label in CHISEP_SOURCES:
        pos, neg = CHISEP_SOURCES[label]
    else:
        chi = DEMO_LABELS[label][2]
        pos, neg = max(chi, 0.0), min(chi, 0.0)
    return pos * factor, neg * factor


def r2_of(label, factor=1.0):
    """R2 (1/s) of a demo label: ``R2* − D_r (χ⁺ − χ⁻)`` in the brain, R2* elsewhere."""
    r2star = DEMO_LABELS[label][3]
    if label not in CHISEP_SOURCES:
        return r2star
    pos, neg = chi_sources(label, factor)
    return r2star - DEMO_DR * (pos - neg)


def label_name(label):
    """``"caudate L"``-style display name of a demo label."""
    name, hemi = DEMO_LABELS[label][:2]
    return f"{name} {hemi}".strip()


BRAIN_LABELS = (4, 5, 6, 7, 8, *DEEP_GREY_LABELS, 30, 31, *LESION_LABELS, 35, 36, 37, 38, 39, 40)
SKULL_AND_AIR_LABELS = (0, 2, 3)
#: proton density (GRE M0) and T1w intensity per label
_M0 = {0: 0.0, 1: 0.9, 2: 0.05, 3: 0.0, 4: 1.0, 5: 0.8, 6: 0.7, 7: 1.0, 8: 1.0, 30: 0.5, 31: 0.2, 32: 0.5, 33: 0.75,
       34: 0.75, 35: 0.75, 36: 0.82, 37: 0.76, 38: 0.7, 39: 0.55, 40: 0.55}
#: (the haemorrhage and the lesions are isointense to white matter on the T1w: T1-hypointense
#: ones, 0.7, moved the small demo's GRE→T1w registration 4 mm along k with one ITK thread —
#: flagged by the QC's similarity check; a registration robustness issue left for the lesion work)
_T1W = {0: 0.0, 1: 0.8, 2: 0.05, 3: 0.0, 4: 0.15, 5: 0.6, 6: 0.9, 7: 0.15, 8: 0.15, 30: 0.4, 31: 0.1, 32: 0.9, 33: 0.9,
        34: 0.9, 35: 0.9, 36: 0.6, 37: 0.9, 38: 0.9, 39: 0.9, 40: 0.9}
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
#: (label, centre, radius mm) of the haemorrhage and the two lesions, all in white matter
_SPHERES = [(32, (28.0, -45.0, 25.0), 3.0), (33, (-28.0, -40.0, 28.0), 4.0), (34, (-26.0, 30.0, 30.0), 4.0),
            (35, (30.0, 10.0, 35.0), 3.5), (35, (-32.0, -10.0, 40.0), 3.0), (35, (-20.0, 45.0, 15.0), 3.5),
            (35, (8.0, -20.0, 35.0), 3.0), (39, (-30.0, 15.0, 38.0), 5.5), (40, (26.0, 20.0, 20.0), 5.0)]
#: (centre, radius mm) of the cortical lesions (the sphere's cortex voxels) and of the
#: leukocortical lesion (on the GM/WM boundary where the cortex is ~10 mm thick: its WM part
#: is label 35, its cortical part 36); of the rim lesion: (centre, outer radius, rim width)
_CORTICAL = [((-50.9, -24.4, 24.0), 3.5), ((54.0, 25.9, 9.8), 3.5)]
_LEUKOCORTICAL = ((25.4, -2.9, 49.0), 4.0)
_RIM_LESION = ((32.0, -15.0, 15.0), 5.0, 1.5)


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
    chi_para, chi_dia : ndarray of float32
        The paramagnetic (≥ 0) and diamagnetic (≤ 0) sources (ppm), ``chi_para + chi_dia
        = chi`` in the brain (:data:`CHISEP_SOURCES`).
    r2 : ndarray of float32
        R2 (1/s): ``r2star − DEMO_DR (chi_para − chi_dia)`` in the brain.
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
    chi_para: np.ndarray = None
    chi_dia: np.ndarray = None
    r2: np.ndarray = None
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
    for label, centre, radius in _SPHERES:
        lab[_ellipsoid(x, y, z, centre, (radius,) * 3) <= 1] = label
    for centre, radius in _CORTICAL:
        lab[(_ellipsoid(x, y, z, centre, (radius,) * 3) <= 1) & (lab == 5)] = 36
    centre, radius = _LEUKOCORTICAL
    ball = _ellipsoid(x, y, z, centre, (radius,) * 3) <= 1
    lab[ball & (lab == 6)] = 35
    lab[ball & (lab == 5)] = 36
    centre, radius, width = _RIM_LESION
    lab[_ellipsoid(x, y, z, centre, (radius,) * 3) <= 1] = 38
    lab[_ellipsoid(x, y, z, centre, (radius - width,) * 3) <= 1] = 37
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

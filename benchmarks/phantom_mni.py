"""A second phantom family, independent of ``qsmprep.demo``: a head built on the MNI ICBM152 2009 brain.

Anatomy comes from a real brain template available offline, the ICBM152 2009 (nonlinear,
symmetric, 1 mm) grey- and white-matter probability maps that ship inside nilearn
(Fonov et al., NeuroImage 2011; a qsm-forward dependency). Nothing here is shared with
``qsmprep.demo``: not the shapes, not the values and not the forward model. The labels
follow QSM-CI's convention (``qsm_ci.qsm_eval``): 1 caudate, 2 globus pallidus, 3 putamen,
4 red nucleus, 5 dentate, 6 substantia nigra, 7 thalamus, 8 WM, 9 GM, 10 CSF, 11 blood
(veins and sinuses), 13 bone, 14 air, 15 scalp and neck, 16 calcification. 17 is a
haemorrhage (QSM-CI has no label for one).

The physics avoids the inverse crime:

* χ (ppm, relative to water) is built on a grid ``oversample`` times finer than the output
  (0.5 mm for a 1 mm output). The head (brain, CSF, skull, scalp, a neck that runs on below
  the field of view, and air in the sphenoid and frontal sinuses and the ear canals) sits in
  air (+9.41 ppm relative to water).
* The field is the dipole convolution of χ on the fine, padded grid (continuous kernel,
  B0 along the scanner's z, which is oblique to the voxels for an oblique protocol).
* The shim subtracts the least-squares fit over the brain of the solid spherical harmonics
  up to 2nd order (1, x, y, z, xy, yz, zx, x²−y², 2z²−x²−y²). Every shim term is harmonic,
  so background removal can remove it. A free x², y², z² fit would add a field that no
  method can remove.
* The complex signal ``M0 exp(−R2* TE) exp(i(φ0 + 2π γ̄ B0 TE Δb))`` is computed on the
  fine grid and then cropped in k-space to the output matrix. Intravoxel dephasing and
  Gibbs ringing are therefore those of a real acquisition. The true χ is the average of
  the fine χ over each output voxel.
* A second, band-limited truth is what a noiseless acquisition at the output resolution can
  see of the brain's χ: the fine χ inside the brain, cropped in k-space like the signal (its
  sinc point-spread function instead of the voxel average). The two differ in the small
  nuclei: the voxel average blurs their edges more, so on the 1 mm head the band-limited
  deep-grey means lie on a line of slope 1.066 against the voxel-averaged ones. The first
  is what the scores use (QSM-CI's truth is image-space resampled too); the second tells
  how much of a deep-grey slope error comes from the sampling, not from the processing.

Protocols (:data:`PROTOCOLS`) vary the echo times, the echo count, how the phase is stored
(Siemens-like integer 0..4095, Philips-like radians, GE-like real/imaginary) and the
obliquity of the slices.

``python benchmarks/phantom_mni.py OUT --resolution 1 --protocol siemens3t`` writes a BIDS
dataset (``OUT/bids``) and its truth (``OUT/truth``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import fft as sfft
from scipy import ndimage

GAMMA_BAR = 42.577478e6  # Hz/T
CHI_AIR = 9.41           # ppm relative to water (air +0.36, water −9.05, SI volume susceptibility)

#: Field of view in MNI mm (x, y, z); the neck continues below it in the simulation.
BOX = ((-90.0, 90.0), (-126.0, 92.0), (-72.0, 108.0))

#: name, label, χ (ppm), R2* (1/s, 3 T), M0 (a.u.)
TISSUES = {
    "caudate": (1, 0.060, 26.0, 0.78), "pallidum": (2, 0.180, 42.0, 0.72), "putamen": (3, 0.090, 30.0, 0.78),
    "red_nucleus": (4, 0.130, 36.0, 0.72), "dentate": (5, 0.110, 34.0, 0.74), "nigra": (6, 0.150, 40.0, 0.72),
    "thalamus": (7, 0.040, 23.0, 0.76), "wm": (8, -0.035, 21.0, 0.68), "gm": (9, 0.020, 16.0, 0.82),
    "csf": (10, 0.000, 3.0, 1.00), "blood": (11, 0.420, 45.0, 0.55), "bone": (13, -1.900, 350.0, 0.05),
    "air": (14, CHI_AIR, 0.0, 0.00), "scalp": (15, -0.020, 30.0, 0.90), "calcification": (16, -0.550, 260.0, 0.10),
    "haemorrhage": (17, 0.550, 140.0, 0.35),
}

#: Deep nuclei: right-hemisphere centres and radii in MNI mm (mirrored for the left), and
#: whether the template's GM probability shapes them (caudate, putamen and thalamus are grey
#: in the T1-based maps; pallidum, the midbrain nuclei and the dentate are not).
NUCLEI = [
    ("caudate", (13.0, 14.0, 9.0), (5.5, 9.0, 8.0), True),
    ("caudate", (15.0, -4.0, 19.0), (4.0, 11.0, 4.5), True),
    ("putamen", (25.0, 3.0, 1.0), (5.5, 14.0, 9.0), True),
    ("pallidum", (19.0, -4.0, -1.0), (3.5, 7.5, 4.5), False),
    ("thalamus", (11.0, -18.0, 7.0), (7.5, 12.5, 8.0), True),
    ("red_nucleus", (5.0, -20.0, -9.0), (3.0, 3.5, 3.5), False),
    ("nigra", (11.0, -17.0, -13.0), (3.5, 7.0, 2.5), False),
    ("dentate", (14.0, -57.0, -33.0), (6.0, 7.5, 5.5), False),
]
#: χ-separation truth: each brain tissue's diamagnetic part χ⁻ (ppm; myelin, calcium), the rest of
#: its χ (textures and nucleus iron gradients included) being paramagnetic χ⁺ = χ − χ⁻ (clipped
#: at 0, the excess then diamagnetic).  Chosen for this family independently of the demo's
#: values (myelinated white matter, lightly myelinated cortex, nuclei with myelinated fibres).
DIAMAGNETIC = {"caudate": -0.010, "pallidum": -0.015, "putamen": -0.012, "red_nucleus": -0.025, "dentate": -0.020,
               "nigra": -0.022, "thalamus": -0.028, "wm": -0.055, "gm": -0.012, "csf": 0.0, "blood": 0.0,
               "calcification": -0.550, "haemorrhage": 0.0}
#: The relaxometric constant of this family's R2 truth at 3 T (Hz/ppm; Shin et al. 2021).
DR_3T = 137.0
#: R2 floor (1/s): where R2* − D_r (χ⁺ − χ⁻) would be lower (the veins: R2* 45 1/s against
#: D_r χ⁺ = 58 1/s) the R2 truth is set to it, so there R2′ from the R2 map undershoots.
R2_FLOOR = 1.0

HAEMORRHAGE = ((26.0, 20.0, 28.0), 5.5)     # right corona radiata, radius (mm)
CALCIFICATION = ((-24.0, -12.0, 28.0), 2.5)  # left periventricular WM

#: MS lesions (``lesions=True``): kind and radius (mm) of each, placed by a fixed random draw
#: (:func:`_ms_lesions`) in this template's white matter / cortex.  Relative χ against the
#: surrounding normal-appearing tissue as reported at 7 T (WM lesions +0.014 ppm, cortical
#: −0.018 ppm; mixed lesions carry both by tissue); the rim lesion has a 1 mm paramagnetic
#: rim (+0.060 ppm, R2* +10 1/s) around a +0.005 ppm core.  WM lesions lose 2 1/s of R2*
#: (demyelination), cortical ones 1 1/s.
MS_LESION_PLAN = (("rim", 4.0), ("mixed", 3.5), ("wm", 2.0), ("wm", 2.5), ("wm", 3.0), ("wm", 3.0),
                  ("wm", 3.5), ("wm", 2.5), ("cortical", 3.0), ("cortical", 3.0), ("cortical", 3.5))
MS_RELATIVE_CHI = {"wm": 0.014, "cortical": -0.018}
MS_RIM = {"core": 0.005, "rim": 0.060, "depth_mm": 1.0, "r2star": 10.0}


@dataclass(frozen=True)
class Protocol:
    tes: tuple                    # s
    b0: float = 3.0               # T
    encoding: str = "int12"       # int12 (uint16 0..4095), radians (float32), realimag
    manufacturer: str = "Siemens"
    oblique_deg: tuple = (0.0, 0.0)  # rotation of the slices about x, then y (degrees)


PROTOCOLS = {
    "siemens3t": Protocol(tes=tuple(np.round(0.004 + 0.0045 * np.arange(6), 6))),
    "ge3t": Protocol(tes=tuple(np.round(0.0032 + 0.0038 * np.arange(8), 6)), encoding="realimag",
                     manufacturer="GE"),
    "philips3t": Protocol(tes=tuple(np.round(0.005 * np.arange(1, 6), 6)), encoding="radians",
                          manufacturer="Philips"),
    "oblique3t": Protocol(tes=tuple(np.round(0.005 * np.arange(1, 6), 6)), oblique_deg=(14.0, -9.0)),
}


@dataclass
class MniPhantom:
    chi: np.ndarray          # ppm relative to water, output grid (fine χ averaged per voxel)
    labels: np.ndarray       # int16, QSM-CI convention
    brain_mask: np.ndarray   # bool: parenchyma, ventricles, nuclei, lesions (≥ half the voxel)
    total_field: np.ndarray  # ppm after the shim (fine field averaged per voxel)
    signal: np.ndarray       # complex64 (x, y, z, echo), k-space cropped, with noise
    affine: np.ndarray
    b0_dir: tuple            # B0 in voxel coordinates
    protocol: Protocol
    voxel_size: tuple
    shim: dict = field(default_factory=dict)
    chi_para: np.ndarray = None   # χ-separation truth (ppm), output grid, brain only
    chi_dia: np.ndarray = None
    r2: np.ndarray = None         # R2 (1/s): R2* − D_r (χ⁺ − χ⁻), floored at R2_FLOOR
    lesions: np.ndarray = None    # numbered MS lesions (output grid; ``lesions=True``)
    chi_bandlimited: np.ndarray = None  # the brain's fine χ cropped in k-space like the signal (ppm)
    lesion_info: dict = field(default_factory=dict)   # {id: {kind, radius_mm, centre_mm}}


def _template():
    d = resources.files("nilearn.datasets") / "data"
    read = {t: nib.load(str(d / f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz")) for t in ("gm", "wm")}
    aff = read["gm"].affine
    return {t: np.asarray(im.dataobj, np.float32) / 255.0 for t, im in read.items()}, aff


def _rotation(ax_deg, ay_deg):
    a, b = np.deg2rad(ax_deg), np.deg2rad(ay_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return ry @ rx


def _tube(shape, h, origin, points, radius):
    """Voxels within ``radius`` mm of a polyline (``points`` in mm)."""
    out = np.zeros(shape, bool)
    pts = np.asarray(points, float)
    for p, q in zip(pts[:-1], pts[1:]):
        lo = np.floor((np.minimum(p, q) - radius - origin) / h).astype(int).clip(0, np.array(shape) - 1)
        hi = np.ceil((np.maximum(p, q) + radius - origin) / h).astype(int).clip(0, np.array(shape) - 1) + 1
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        g = np.stack(np.meshgrid(*[origin[i] + h * np.arange(lo[i], hi[i]) for i in range(3)], indexing="ij"), -1)
        d = q - p
        t = np.clip(((g - p) @ d) / max(d @ d, 1e-9), 0, 1)
        out[sl] |= np.linalg.norm(g - (p + t[..., None] * d), axis=-1) <= radius
    return out


def _ms_lesions(lab, axes, h, chi, r2s, seed=11):
    """Add :data:`MS_LESION_PLAN`'s lesions to the fine ``chi`` and ``r2s`` (in place); return the
    fine numbered lesion map and ``{id: {kind, radius_mm, centre_mm}}``.

    Centres are drawn (fixed seed, on a 2 mm lattice) where the lesion fits its kind: WM and
    rim lesions wholly inside WM (2 mm from any other tissue), cortical lesions in cortex at
    least 1.5 mm from WM (the ball is then cut to cortex), mixed ones in cortex next to WM;
    each at least 15 mm from the other lesions and 3 mm from vessels, nuclei, the haemorrhage
    and the calcification.
    """
    wm_k, gm_k = TISSUES["wm"][0], TISSUES["gm"][0]
    lrng = np.random.default_rng(seed)
    step = max(1, int(round(2.0 / h)))
    sub = lab[::step, ::step, ::step]
    hs = h * step
    d_in_wm = ndimage.distance_transform_edt(sub == wm_k, sampling=hs)
    d_to_wm = ndimage.distance_transform_edt(sub != wm_k, sampling=hs)
    busy = ~np.isin(sub, (wm_k, gm_k, TISSUES["csf"][0], TISSUES["scalp"][0], TISSUES["bone"][0],
                          TISSUES["air"][0]))
    d_busy = ndimage.distance_transform_edt(~busy, sampling=hs)
    origin = np.array([a[0] for a in axes])
    out = np.zeros(lab.shape, np.int16)
    info, centres = {}, []
    for lid, (kind, r) in enumerate(MS_LESION_PLAN, start=1):
        if kind in ("wm", "rim"):
            ok = d_in_wm >= r + 2.0
        elif kind == "cortical":
            ok = (sub == gm_k) & (d_to_wm >= 1.5)
        else:
            ok = (sub == gm_k) & (d_to_wm <= hs)
        ok &= d_busy >= r + 3.0
        cand = np.argwhere(ok) * hs + origin
        if centres:
            far = np.min(np.linalg.norm(cand[:, None, :] - np.asarray(centres)[None], axis=-1), axis=1) >= 15.0
            cand = cand[far]
        if not len(cand):
            raise RuntimeError(f"no room for MS lesion {lid} ({kind})")
        c = cand[lrng.integers(len(cand))]
        centres.append(c)
        lo = np.floor((c - r - origin) / h).astype(int).clip(0)
        hi = np.minimum(np.ceil((c + r - origin) / h).astype(int) + 1, lab.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        g = np.meshgrid(*[origin[i] + h * np.arange(lo[i], hi[i]) - c[i] for i in range(3)], indexing="ij",
                        sparse=True)
        dist = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
        ball = dist <= r
        box_lab, box_chi, box_r2 = lab[sl], chi[sl], r2s[sl]
        is_wm, is_gm = box_lab == wm_k, box_lab == gm_k
        if kind == "cortical":
            ball &= is_gm
        elif kind == "mixed":
            ball &= is_wm | is_gm
        box_chi[ball & is_wm] += 0.0 if kind == "rim" else MS_RELATIVE_CHI["wm"]
        box_chi[ball & is_gm] += MS_RELATIVE_CHI["cortical"]
        box_r2[ball & is_wm] -= 2.0
        box_r2[ball & is_gm] -= 1.0
        if kind == "rim":
            shell = ball & (dist > r - MS_RIM["depth_mm"])
            box_chi[ball & ~shell] += MS_RIM["core"]
            box_chi[shell] += MS_RIM["rim"]
            box_r2[shell] += MS_RIM["r2star"]
        out[sl][ball] = lid
        info[lid] = {"kind": kind, "radius_mm": r, "centre_mm": [float(v) for v in c]}
    return out, info


def _lesions_to_output(fine, oversample):
    """Numbered lesions on the output grid: a voxel belongs to the lesion that fills at least
    half of it (fine voxels averaged as for χ)."""
    out_shape = tuple(s // oversample for s in fine.shape)
    out = np.zeros(out_shape, np.int16)
    for lid, sl in enumerate(ndimage.find_objects(fine), start=1):
        if sl is None:
            continue
        lo = [max(0, (s.start // oversample - 1)) for s in sl]
        hi = [min(n, s.stop // oversample + 2) for s, n in zip(sl, out_shape)]
        crop = fine[tuple(slice(a * oversample, b * oversample) for a, b in zip(lo, hi))] == lid
        frac = _voxel_average(crop, oversample)
        box = out[tuple(slice(a, b) for a, b in zip(lo, hi))]
        box[(frac >= 0.5) & (box == 0)] = lid
    return out


def _fine_anatomy(resolution, oversample, rng, lesions=False):
    """Labels, χ, R2*, M0 on the fine grid (``oversample`` × the output matrix of :data:`BOX`, the
    neck extended ``ext`` voxels down); with ``lesions`` also the MS lesions (:func:`_ms_lesions`)."""
    tpm, aff = _template()
    h = resolution / oversample
    ext = int(round(40.0 / h))                        # neck below the field of view
    n = [oversample * int(round((hi - lo) / resolution)) for lo, hi in BOX]
    origin = np.array([lo for lo, _ in BOX]) - np.array([0, 0, ext * h])
    shape = (n[0], n[1], n[2] + ext)
    axes = [origin[i] + h * np.arange(shape[i]) for i in range(3)]
    inv = np.linalg.inv(aff)
    vox = [inv[i, i] * axes[i] + inv[i, 3] for i in range(3)]
    grid = np.meshgrid(*vox, indexing="ij", sparse=True)
    coords = np.broadcast_arrays(*grid)
    gm = ndimage.map_coordinates(tpm["gm"], coords, order=1, cval=0.0).astype(np.float32)
    wm = ndimage.map_coordinates(tpm["wm"], coords, order=1, cval=0.0).astype(np.float32)
    del coords
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    tissue = gm + wm
    brain = tissue > 0.5
    # morphology by Euclidean distances (a ball of 4 mm is 17³ voxels at 0.5 mm): closing by
    # 4 mm, holes filled, then 1.5 mm of subarachnoid CSF
    ic = ndimage.distance_transform_edt(tissue <= 0.2, sampling=h) <= 4.0
    ic = ndimage.distance_transform_edt(ic, sampling=h) > 4.0
    ic = ndimage.binary_fill_holes(ic)
    dist = ndimage.distance_transform_edt(~ic, sampling=h).astype(np.float32)
    ic = dist <= 1.5
    dist = np.maximum(dist - 1.5, 0.0)
    skull = (dist > 0) & (dist <= 6.5)
    scalp = (dist > 6.5) & (dist <= 11.0)
    neck = (z < -35.0) & (((x / 58.0) ** 2 + ((y + 22.0) / 62.0) ** 2) <= 1.0) & ~ic & ~skull
    head = ic | skull | scalp | neck
    air = ~head
    for c, r in (((0.0, 22.0, -38.0), (12.0, 11.0, 8.0)), ((0.0, 74.0, -4.0), (9.0, 5.0, 8.0)),
                 ((62.0, -20.0, -42.0), (9.0, 4.0, 4.0)), ((-62.0, -20.0, -42.0), (9.0, 4.0, 4.0))):
        air |= (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0) & ~ic
    lab = np.full(shape, TISSUES["air"][0], np.int16)
    lab[(scalp | neck) & ~air] = TISSUES["scalp"][0]
    lab[skull & ~air] = TISSUES["bone"][0]
    lab[ic] = TISSUES["csf"][0]
    lab[brain & (gm > wm)] = TISSUES["gm"][0]
    lab[brain & (wm >= gm)] = TISSUES["wm"][0]
    for name, c, r, gm_shaped in NUCLEI:
        for sx in (1.0, -1.0):
            inside = ((x - sx * c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0
            inside = inside & ic & ((gm > 0.5 * wm) if gm_shaped else True)
            lab[inside] = TISSUES[name][0]
    # veins: superior sagittal sinus under the skull's midline, straight and transverse sinuses,
    # internal cerebral veins, and cortical veins on the brain surface
    mid = int(np.argmin(np.abs(axes[0])))
    top = [(yy, axes[2][np.flatnonzero(ic[mid, j])[-1]]) for j, yy in enumerate(axes[1])
           if ic[mid, j].any() and -100 <= yy <= 62]
    sss = [(0.0, yy, zz - 3.5) for yy, zz in top[::max(1, int(4 / h))]]
    conf = (0.0, -100.0, 2.0)
    veins = _tube(shape, h, origin, sss, 3.0) | _tube(shape, h, origin, [(0.0, -48.0, 14.0), conf], 2.5)
    for sx in (1.0, -1.0):
        veins |= _tube(shape, h, origin, [conf, (sx * 30.0, -95.0, -8.0), (sx * 48.0, -78.0, -22.0)], 3.0)
        veins |= _tube(shape, h, origin, [(sx * 2.5, -8.0, 16.0), (sx * 3.0, -30.0, 18.0), (0.0, -46.0, 14.0)], 1.3)
    surf = np.argwhere(ic & ~ndimage.binary_erosion(ic, iterations=3) & (np.asarray(z) > -20.0))
    for i in rng.choice(len(surf), 14, replace=False):
        p = origin + h * surf[i]
        steps = [p]
        d = rng.normal(size=3)
        for _ in range(5):
            d = d + 0.5 * rng.normal(size=3)
            steps.append(steps[-1] + 6.0 * d / np.linalg.norm(d))
        veins |= _tube(shape, h, origin, steps, 1.0)
    lab[veins & ic] = TISSUES["blood"][0]
    for name, (c, r) in (("haemorrhage", HAEMORRHAGE), ("calcification", CALCIFICATION)):
        lab[((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= r * r] = TISSUES[name][0]
    by_label = {v[0]: v for v in TISSUES.values()}
    lut = np.zeros((max(by_label) + 1, 3), np.float32)
    for k, (_, chi_v, r2, m0) in by_label.items():
        lut[k] = (chi_v, r2, m0)
    chi, r2s, m0 = (lut[lab, i] for i in range(3))
    # textures: smooth random variation in GM and WM, an iron gradient across each nucleus
    tex = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.2 / h)
    tex *= 0.009 / max(float(tex[brain].std()), 1e-9)
    parenchyma = np.isin(lab, (8, 9))
    chi[parenchyma] += tex[parenchyma]
    r2s[parenchyma] += 400.0 * tex[parenchyma]
    for k in range(1, 8):
        sel = np.nonzero(lab == k)
        g = rng.normal(size=3)
        ramp = axes[0][sel[0]] * g[0] + axes[1][sel[1]] * g[1] + axes[2][sel[2]] * g[2]  # on the nucleus only
        chi[sel] *= 1.0 + 0.15 * (ramp - ramp.mean()) / max(float(np.abs(ramp - ramp.mean()).max()), 1e-9)
    lesion_map, lesion_info = (_ms_lesions(lab, axes, h, chi, r2s) if lesions else (None, {}))
    # χ-separation truth (the MR signal does not change: R2 = R2* − D_r (χ⁺ − χ⁻) absorbs it)
    dia_lut = np.zeros(max(by_label) + 1, np.float32)
    for name, d in DIAMAGNETIC.items():
        dia_lut[TISSUES[name][0]] = d
    in_model = np.isin(lab, [TISSUES[n][0] for n in DIAMAGNETIC])
    para = np.where(in_model, np.maximum(chi - dia_lut[lab], 0), np.maximum(chi, 0)).astype(np.float32)
    dia = (chi - para).astype(np.float32)
    r2 = np.where(in_model, np.maximum(r2s - DR_3T * (para - dia), R2_FLOOR), r2s).astype(np.float32)
    # the scored brain: parenchyma with the ventricles, nuclei, lesions and the veins inside it
    # (the subarachnoid CSF and the sinuses are outside, as brain extraction leaves them)
    brain_mask = ndimage.binary_fill_holes(brain) | np.isin(lab, (1, 2, 3, 4, 5, 6, 7, 16, 17))
    return {"labels": lab, "chi": chi, "r2s": r2s, "m0": m0, "brain": brain_mask, "chi_para": para, "chi_dia": dia,
            "r2": r2, "lesions": lesion_map, "lesion_info": lesion_info,
            "origin": origin, "shape": shape, "ext": ext, "axes": axes}


def _dipole_field(chi_rel_air, h, b0_dir, workers):
    """Δb (ppm) = F⁻¹[(1/3 − (k·b)²/k²) F χ] on a grid padded by a third (continuous kernel).

    Written here on purpose instead of calling ``qsmprep.qsm.kernels.dipole_kernel``: the truth
    must not share code with the inversions it scores."""
    shape = tuple(sfft.next_fast_len(int(np.ceil(s * 4 / 3)), real=True) for s in chi_rel_air.shape)
    k = np.meshgrid(*[sfft.fftfreq(n, h) for n in shape[:-1]], sfft.rfftfreq(shape[-1], h),
                    indexing="ij", sparse=True)
    kb = sum(ki * b for ki, b in zip(k, b0_dir))
    k2 = sum(ki * ki for ki in k)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (1.0 / 3.0 - kb * kb / k2).astype(np.float32)
    d[0, 0, 0] = 0.0
    spec = sfft.rfftn(chi_rel_air, shape, workers=workers)
    spec *= d
    del d
    return sfft.irfftn(spec, shape, workers=workers)[tuple(slice(0, s) for s in chi_rel_air.shape)]


def _solid_harmonics(x, y, z):
    """The 9 real solid spherical harmonics of degree ≤ 2 (each satisfies ∇²Y = 0)."""
    return [np.ones_like(x), x, y, z, x * y, y * z, z * x, x * x - y * y, 2 * z * z - x * x - y * y]


def _shim(fieldmap, brain, axes):
    pts = np.argwhere(brain)
    c = [axes[i][pts[:, i]] for i in range(3)]
    centre = [float(v.mean()) for v in c]
    scale = 100.0
    basis = np.stack(_solid_harmonics(*[(c[i] - centre[i]) / scale for i in range(3)]), 1)
    coef, *_ = np.linalg.lstsq(basis.astype(np.float64), fieldmap[brain].astype(np.float64), rcond=None)
    x, y, z = np.meshgrid(*[(axes[i] - centre[i]) / scale for i in range(3)], indexing="ij", sparse=True)
    fit = sum(float(a) * b for a, b in zip(coef, _solid_harmonics(x, y, z)))
    return (fieldmap - fit).astype(np.float32), {"centre_mm": centre, "scale_mm": scale,
                                                 "coefficients_ppm": [float(a) for a in coef]}


def _voxel_average(a, os_):
    """Mean of ``a`` over output voxels centred on fine voxels 0, os, 2·os, … (width os)."""
    if os_ % 2:    # odd: os_ whole fine voxels
        w = np.ones(os_, np.float32)
    else:          # even: os_ − 1 whole ones and half of each neighbour
        w = np.ones(os_ + 1, np.float32)
        w[0] = w[-1] = 0.5
    w /= w.sum()
    out = a.astype(np.float32)
    for ax in range(3):
        out = ndimage.convolve1d(out, w, axis=ax, mode="nearest")
    return out[::os_, ::os_, ::os_]


def _kspace_crop(img, out_shape, workers):
    """Low-pass resampling: keep the central ``out_shape`` frequencies (samples at fine voxels 0, os, …)."""
    spec = sfft.fftn(img, workers=workers)
    src, dst = [], []
    for n_in, n_out in zip(img.shape, out_shape):
        f = np.rint(sfft.fftfreq(n_in) * n_in).astype(int)
        keep = np.flatnonzero((f >= -(n_out // 2)) & (f < n_out - n_out // 2))
        src.append(keep)
        dst.append(np.mod(f[keep], n_out))
    crop = np.zeros(out_shape, np.complex64)
    crop[np.ix_(*dst)] = spec[np.ix_(*src)]
    del spec
    return (sfft.ifftn(crop, workers=workers) * (np.prod(out_shape) / np.prod(img.shape))).astype(np.complex64)


def make_mni_phantom(resolution=1.0, *, protocol="siemens3t", oversample=2, snr=100.0, seed=0, workers=2,
                     lesions=False):
    """The MNI-based head at ``resolution`` mm, simulated ``oversample`` times finer, for a protocol;
    ``lesions``: with the MS lesions of :data:`MS_LESION_PLAN` (the rest of the head unchanged)."""
    prot = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    rng = np.random.default_rng(seed)
    h = resolution / oversample
    a = _fine_anatomy(resolution, oversample, rng, lesions=lesions)
    rot = _rotation(*prot.oblique_deg)
    b0_dir = tuple(float(v) for v in rot.T @ np.array([0.0, 0.0, 1.0]))   # scanner z in voxel axes
    chi_air = np.where(a["labels"] == TISSUES["air"][0], 0.0, a["chi"] - CHI_AIR).astype(np.float32)
    fld = _dipole_field(chi_air, h, b0_dir, workers)
    del chi_air
    fld, shim = _shim(fld, a["brain"], a["axes"])
    ext = a["ext"]
    fov = (slice(None), slice(None), slice(ext, None))          # drop the extended neck
    labels, chi, r2s, m0, fld = (v[fov] for v in (a["labels"], a["chi"], a["r2s"], a["m0"], fld))
    brain_f = a["brain"][fov]
    out_shape = tuple(s // oversample for s in labels.shape)
    xx, yy, zz = np.meshgrid(*[np.linspace(-1, 1, s) for s in labels.shape], indexing="ij", sparse=True)
    c = rng.uniform(-1, 1, 6)
    phi0 = (np.pi * (0.3 * c[0] + 0.4 * c[1] * xx + 0.4 * c[2] * yy + 0.3 * c[3] * zz
                     + 0.3 * c[4] * xx * yy + 0.2 * c[5] * zz * zz)).astype(np.float32)
    signal = np.empty(out_shape + (len(prot.tes),), np.complex64)
    for e, te in enumerate(prot.tes):
        s = m0 * np.exp(-r2s * te) * np.exp(1j * (phi0 + 2 * np.pi * GAMMA_BAR * prot.b0 * te * 1e-6 * fld))
        signal[..., e] = _kspace_crop(s.astype(np.complex64), out_shape, workers)
    chi_out = _voxel_average(chi, oversample)      # the fine shape is oversample × out_shape
    chi_bl = _kspace_crop(np.where(brain_f, chi, 0).astype(np.complex64), out_shape, workers).real
    field_out = _voxel_average(fld, oversample)
    brain = _voxel_average(brain_f, oversample) >= 0.5
    lab_out = labels[::oversample, ::oversample, ::oversample]
    ref = float(np.abs(signal[..., 0][brain]).mean())
    sigma = ref / snr
    signal += (sigma / np.sqrt(2)) * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)
                                      ).astype(np.complex64)
    origin = np.array([lo for lo, _ in BOX])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([resolution] * 3)
    affine[:3, 3] = rot @ origin
    sources = {k: np.where(brain, _voxel_average(a[k][fov], oversample), 0).astype(np.float32)
               for k in ("chi_para", "chi_dia")}
    r2_out = _voxel_average(a["r2"][fov], oversample).astype(np.float32)
    les_out = _lesions_to_output(a["lesions"][fov], oversample) if lesions else None
    return MniPhantom(lesions=les_out, lesion_info=a["lesion_info"], chi=np.where(brain, chi_out, 0).astype(np.float32),
                      chi_bandlimited=np.where(brain, chi_bl, 0).astype(np.float32), labels=lab_out.astype(np.int16),
                      brain_mask=brain, total_field=field_out.astype(np.float32), signal=signal, affine=affine,
                      b0_dir=b0_dir, protocol=prot, voxel_size=(resolution,) * 3, shim=shim, r2=r2_out, **sources)


def _json(path, data):
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def write_mni_dataset(out_dir, *, resolution=1.0, protocol="siemens3t", snr=100.0, seed=0, workers=2,
                      lesions=False):
    """Write ``out_dir/bids`` (one participant, the protocol's encoding) and ``out_dir/truth``.

    Returns the :class:`MniPhantom`. Truth files (``truth/sub-01``): ``sub-01_Chimap``,
    ``sub-01_desc-bandlimited_Chimap`` (the module docstring's band-limited truth),
    ``sub-01_dseg`` (QSM-CI labels, ``dseg.tsv``), ``sub-01_desc-brain_mask`` and
    ``sub-01_desc-shimmed_fieldmap`` (ppm), the χ-separation truth
    ``sub-01_desc-{paramagnetic,diamagnetic}_Chimap`` (ppm) and ``sub-01_R2map`` (1/s), and
    ``phantom.json`` (protocol, B0 direction, shim coefficients); ``truth/r2`` holds the R2 map
    as a derivatives dataset (``--r2-dir``).  With ``lesions``: ``sub-01_desc-lesions_dseg``
    (numbered MS lesions) and their kinds in ``phantom.json``.
    """
    out_dir = Path(out_dir)
    ph = make_mni_phantom(resolution, protocol=protocol, snr=snr, seed=seed, workers=workers, lesions=lesions)
    prot = ph.protocol
    bids, truth = out_dir / "bids", out_dir / "truth" / "sub-01"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    _json(bids / "dataset_description.json", {
        "Name": f"MNI ICBM152 head phantom ({protocol}, {resolution:g} mm)", "BIDSVersion": "1.9.0",
        "DatasetType": "raw", "GeneratedBy": [{"Name": "qsmprep benchmarks/phantom_mni.py"}]})
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    mag = np.abs(ph.signal)
    parts = {"int12": ("mag", "phase"), "radians": ("mag", "phase"), "realimag": ("real", "imag")}[prot.encoding]
    for e, te in enumerate(prot.tes, start=1):
        s = ph.signal[..., e - 1]
        if prot.encoding == "int12":
            data = {"mag": np.rint(mag[..., e - 1] / mag.max() * 4000).astype(np.uint16),
                    "phase": (np.rint((np.angle(s) + np.pi) / (2 * np.pi) * 4096).astype(np.int64) % 4096
                              ).astype(np.uint16)}
        elif prot.encoding == "radians":
            data = {"mag": mag[..., e - 1].astype(np.float32), "phase": np.angle(s).astype(np.float32)}
        else:
            data = {"real": s.real.astype(np.float32), "imag": s.imag.astype(np.float32)}
        for part in parts:
            stem = anat / f"sub-01_echo-{e}_part-{part}_MEGRE"
            nib.Nifti1Image(data[part], ph.affine).to_filename(f"{stem}.nii.gz")
            meta = {"EchoTime": float(te), "EchoNumber": e, "MagneticFieldStrength": prot.b0,
                    "Manufacturer": prot.manufacturer, "RepetitionTime": 0.035, "FlipAngle": 15,
                    "MRAcquisitionType": "3D"}  # k-space cropped on all three axes
            if part == "phase":  # BIDS requires Units on part-phase
                meta["Units"] = "rad" if prot.encoding == "radians" else "arbitrary"
            _json(f"{stem}.json", meta)
    for name, data in (("sub-01_Chimap", ph.chi), ("sub-01_desc-bandlimited_Chimap", ph.chi_bandlimited),
                       ("sub-01_dseg", ph.labels),
                       ("sub-01_desc-brain_mask", ph.brain_mask.astype(np.uint8)),
                       ("sub-01_desc-shimmed_fieldmap", ph.total_field),
                       ("sub-01_desc-paramagnetic_Chimap", ph.chi_para),
                       ("sub-01_desc-diamagnetic_Chimap", ph.chi_dia), ("sub-01_R2map", ph.r2)):
        nib.Nifti1Image(data, ph.affine).to_filename(truth / f"{name}.nii.gz")
    if lesions:
        nib.Nifti1Image(ph.lesions, ph.affine).to_filename(truth / "sub-01_desc-lesions_dseg.nii.gz")
    # the R2 map as a derivatives dataset for ``--r2-dir`` (on the GRE grid: a registered spin echo)
    r2_anat = out_dir / "truth" / "r2" / "sub-01" / "anat"
    r2_anat.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(ph.r2, ph.affine).to_filename(r2_anat / "sub-01_R2map.nii.gz")
    _json(out_dir / "truth" / "r2" / "dataset_description.json", {
        "Name": "MNI phantom R2 maps", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsmprep benchmarks/phantom_mni.py"}]})
    names = {v[0]: k for k, v in TISSUES.items()}
    (truth / "dseg.tsv").write_text("index\tname\n" + "".join(f"{k}\t{names[k]}\n" for k in sorted(names)))
    _json(truth / "phantom.json", {"protocol": protocol, "resolution_mm": resolution, "snr": snr, "seed": seed,
                                   "EchoTime": list(prot.tes), "MagneticFieldStrength": prot.b0,
                                   "B0Direction": list(ph.b0_dir), "encoding": prot.encoding,
                                   "shim": ph.shim, "chi_reference": "water (ppm)",
                                   "lesions": {str(k): v for k, v in ph.lesion_info.items()}})
    return ph


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--resolution", type=float, default=1.0, help="output voxel size (mm)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="siemens3t")
    p.add_argument("--snr", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lesions", action="store_true", help="add the MS lesions (MS_LESION_PLAN)")
    a = p.parse_args(argv)
    ph = write_mni_dataset(a.out_dir, resolution=a.resolution, protocol=a.protocol, snr=a.snr, seed=a.seed,
                           workers=a.workers, lesions=a.lesions)
    print(f"wrote {a.out_dir}/bids and truth: {ph.labels.shape} at {a.resolution:g} mm, B0 {ph.b0_dir}")


if __name__ == "__main__":
    main()

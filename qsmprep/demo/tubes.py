"""A tube phantom for ``qsmprep calibrate``: tubes of known gadolinium concentration in water.

A water-filled cylinder (radius 60 mm, 150 mm long, axis along y: lying in the bore,
perpendicular to B0) in air, holding six tubes (radius 8 mm, 100 mm long, parallel to it) on
a 30 mm circle.  Each tube's χ is ``molar_chi × concentration`` relative to water (gadolinium
≈ 0.33 ppm/mM, :mod:`qsmprep.analysis.calibration`) and its R2* ``r2star_water +
r2star_relaxivity × concentration``.  The total field is the dipole field of the whole object
in air (9.4 ppm) on a grid padded to twice its size; the signal is qsm-forward's, as for the
head phantom (:func:`qsmprep.demo.physics.simulate_gre`), Siemens-style integer phase.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.demo.anatomy import B0, FLIP, TR, Phantom, grid_affine

#: voxel size (mm), matrix, echo times (s) of the tube phantom
TUBE_GRID = (2.0, (96, 80, 96), (0.004, 0.009, 0.014, 0.019))
_CONTAINER = (60.0, 75.0)     # radius, half length (mm), axis along y
_TUBE = (8.0, 50.0, 30.0)     # radius, half length, distance of the axes from the container's axis (mm)


def make_tube_phantom(concentrations=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0), *, molar_chi=0.326, r2star_water=5.0,
                      r2star_relaxivity=5.0):
    """The tube phantom's truth (:class:`qsmprep.demo.anatomy.Phantom`; labels 1 water, 1 + i tube i)."""
    from qsmprep.demo.physics import dipole_field
    from qsmprep.qsm.kernels import b0_direction

    vs, shape, tes = TUBE_GRID
    affine = grid_affine(shape, vs)
    ii, jj, kk = np.indices(shape, dtype=np.float32)
    x, y, z = (affine[r, 0] * ii + affine[r, 1] * jj + affine[r, 2] * kk + affine[r, 3] for r in range(3))
    rad, half = _CONTAINER
    labels = np.zeros(shape, np.int16)
    labels[(x ** 2 + z ** 2 <= rad ** 2) & (np.abs(y) <= half)] = 1
    t_rad, t_half, ring = _TUBE
    for i, _c in enumerate(concentrations):
        ang = 2 * np.pi * i / len(concentrations)
        cx, cz = ring * np.cos(ang), ring * np.sin(ang)
        labels[((x - cx) ** 2 + (z - cz) ** 2 <= t_rad ** 2) & (np.abs(y) <= t_half)] = 2 + i
    chi_lut = np.array([9.4, 0.0] + [molar_chi * c for c in concentrations], np.float32)
    r2_lut = np.array([0.0, r2star_water] + [r2star_water + r2star_relaxivity * c for c in concentrations],
                      np.float32)
    chi = chi_lut[labels]
    inside = labels > 0
    b0_dir = b0_direction(affine)
    total = dipole_field(chi, (vs,) * 3, b0_dir, outside=9.4)
    local = dipole_field(np.where(inside, chi, 0.0), (vs,) * 3, b0_dir, outside=0.0)
    local -= local[inside].mean()
    lut = {0: ("air", "", 9.4, 0.0), 1: ("water", "", 0.0, r2star_water)}
    lut.update({2 + i: (f"tube {i + 1}", "", float(chi_lut[2 + i]), float(r2_lut[2 + i]))
                for i in range(len(concentrations))})
    return Phantom(chi=np.where(inside, chi, 0.0).astype(np.float32), labels=labels, brain_mask=inside,
                   m0=inside.astype(np.float32), r2star=r2_lut[labels], total_field=total.astype(np.float32),
                   local_field=local.astype(np.float32), background_field=(total - local).astype(np.float32),
                   affine=affine, voxel_size=(vs,) * 3, b0=B0, b0_dir=b0_dir, tes=np.asarray(tes), lut=lut)


def write_tube_dataset(out_dir, concentrations=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0), *, molar_chi=0.326, snr=100.0,
                       seed=0):
    """Write the tube phantom as BIDS (``out_dir/bids``, ``sub-phantom``) and its tube table
    (``out_dir/tubes.tsv`` with a label map ``out_dir/tubes_dseg.nii.gz`` on the scan's grid).

    Returns ``{"bids_dir", "tubes", "molar_chi"}``.
    """
    from qsmprep.demo.physics import simulate_gre

    out_dir = Path(out_dir)
    bids = out_dir / "bids"
    anat = bids / "sub-phantom" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    ph = make_tube_phantom(concentrations, molar_chi=molar_chi)
    sig, _ = simulate_gre(ph, snr=snr, seed=seed)
    mag = np.abs(sig)
    mag_int = np.rint(mag / mag.max() * 4000).astype(np.uint16)
    phase_int = (np.rint((np.angle(sig) + np.pi) / (2 * np.pi) * 4096).astype(np.int64) % 4096).astype(np.uint16)
    (bids / "dataset_description.json").write_text(json.dumps({
        "Name": "qsmprep tube phantom (gadolinium in water)", "BIDSVersion": "1.9.0", "DatasetType": "raw"}) + "\n")
    (bids / "participants.tsv").write_text("participant_id\nsub-phantom\n")
    for e, te in enumerate(ph.tes, start=1):
        for part, data in (("mag", mag_int[..., e - 1]), ("phase", phase_int[..., e - 1])):
            stem = anat / f"sub-phantom_echo-{e}_part-{part}_MEGRE"
            nib.Nifti1Image(data, ph.affine).to_filename(f"{stem}.nii.gz")
            meta = {"EchoTime": round(float(te), 6), "EchoNumber": e, "MagneticFieldStrength": ph.b0,
                    "Manufacturer": "Siemens", "RepetitionTime": TR, "FlipAngle": FLIP}
            if part == "phase":
                meta["Units"] = "arbitrary"
            Path(f"{stem}.json").write_text(json.dumps(meta) + "\n")
    tube_labels = np.where(ph.labels >= 2, ph.labels - 1, 0).astype(np.int16)
    nib.Nifti1Image(tube_labels, ph.affine).to_filename(out_dir / "tubes_dseg.nii.gz")
    lines = ["tube\tconcentration\tconcentration_units\tlabel\tlabel_map"]
    lines += [f"tube {i + 1}\t{c:g}\tmM\t{i + 1}\ttubes_dseg.nii.gz" for i, c in enumerate(concentrations)]
    (out_dir / "tubes.tsv").write_text("\n".join(lines) + "\n")
    return {"bids_dir": str(bids), "tubes": str(out_dir / "tubes.tsv"), "molar_chi": float(molar_chi)}

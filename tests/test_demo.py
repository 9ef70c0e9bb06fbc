"""The demo phantom and dataset: physics, conventions and the written BIDS tree.

Only the ``small`` phantom (3 mm, computed on a 1.5 mm grid) is generated here; the
session fixtures ``small_phantom`` / ``small_gre`` (conftest) are ``make_phantom("small",
seed=0)`` and ``simulate_gre(..., snr=100, seed=0)``, and the written dataset's sub-01 must
reproduce them bit for bit (determinism).
"""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import scipy.fft as sfft
from scipy import ndimage as ndi

from qsmprep.demo import (
    BRAIN_LABELS, DEEP_GREY_LABELS, DEMO_LABELS, SKULL_AND_AIR_LABELS, dipole_field, make_phantom, render_t1w,
    write_demo_dataset,
)
from qsmprep.demo.anatomy import _subject_variation
from qsmprep.qsm.kernels import GAMMA_BAR_MHZ_PER_T

SMALL_TES = (0.004, 0.009, 0.014, 0.019)
TRUTH_NAMES = ("Chimap", "dseg", "desc-brain_mask", "desc-localfield_fieldmap", "desc-totalfield_fieldmap",
               "desc-backgroundfield_fieldmap", "R2starmap")


def _world(affine, mask):
    """World (RAS+ mm) coordinates of the voxels of ``mask``."""
    ijk = np.argwhere(mask)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _field_d0_zero(chi, voxel_size, b0_dir):
    """Field of χ, written independently of qsmprep: zero padding to 2×, D(0) = 0, float64."""
    shape = tuple(2 * n for n in chi.shape)
    freqs = [np.fft.fftfreq(shape[0], voxel_size[0]), np.fft.fftfreq(shape[1], voxel_size[1]),
             np.fft.rfftfreq(shape[2], voxel_size[2])]
    kx, ky, kz = np.meshgrid(*freqs, indexing="ij", sparse=True)
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * b0_dir[0] + ky * b0_dir[1] + kz * b0_dir[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = 1.0 / 3.0 - kb**2 / k2
    kernel[0, 0, 0] = 0.0
    field = sfft.irfftn(sfft.rfftn(chi, s=shape) * kernel, s=shape)
    return field[: chi.shape[0], : chi.shape[1], : chi.shape[2]]


def test_dipole_field_matches_qsm_forward():
    from qsm_forward import generate_field

    rng = np.random.default_rng(0)
    chi = np.zeros((24, 26, 20))
    chi[6:18, 8:18, 5:15] = 0.1 + 0.05 * rng.standard_normal((12, 10, 10))
    chi = ndi.gaussian_filter(chi, 1.0)
    b0 = np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0])
    ours = dipole_field(chi, (1.0, 1.0, 1.0), b0)
    ref = generate_field(chi, voxel_size=[1, 1, 1], B0_dir=list(b0))
    # equal up to the constant from qsm-forward's D(0) = 1/3 (and, for an oblique B0, the
    # sign convention of the Nyquist plane, hence the smooth χ here)
    diff = (ours - ours.mean()) - (ref - ref.mean())
    assert np.abs(diff).max() < 1e-3 * np.abs(ref - ref.mean()).max()


def test_grid_labels_and_lut(small_phantom):
    ph = small_phantom
    assert ph.chi.shape == (72, 72, 48) and ph.voxel_size == (3.0, 3.0, 3.0)
    assert ph.tes == pytest.approx(SMALL_TES) and ph.b0 == 3.0
    assert ph.chi.dtype == np.float32 and ph.labels.dtype == np.int16 and ph.brain_mask.dtype == bool
    for arr in (ph.m0, ph.r2star, ph.total_field, ph.local_field, ph.background_field):
        assert arr.dtype == np.float32 and arr.shape == ph.chi.shape and np.isfinite(arr).all()
    # the corner is air (the dipole convolution pads with it)
    assert ph.labels[0, 0, 0] == 0 and ph.chi[0, 0, 0] == pytest.approx(9.4) and ph.m0[0, 0, 0] == 0
    # brain mask: CSF, ventricles, GM, WM, nuclei, vein, calcification; no scalp, skull or air
    assert np.array_equal(ph.brain_mask, np.isin(ph.labels, BRAIN_LABELS))
    assert not np.isin(ph.labels[ph.brain_mask], SKULL_AND_AIR_LABELS + (1,)).any()
    present = set(np.unique(ph.labels[ph.brain_mask]).tolist())
    assert {4, 5, 6, 7, 8, 30, 31} <= present
    assert np.isin(ph.labels, (2, 3)).any() and (ph.labels == 1).any()  # skull, sinus air, scalp
    # χ signs of the bulk tissues
    assert ph.lut[6][2] < 0 < ph.lut[5][2] and ph.lut[2][2] < -1 and ph.lut[3][2] > 9
    assert ph.lut[31][2] < 0 and ph.lut[30][2] > 0.2  # calcification, vein
    # all 12 deep-grey labels, both hemispheres on the right side (RAS+: left is x < 0)
    assert len(DEEP_GREY_LABELS) == 12
    assert sorted(DEMO_LABELS[lab][1] for lab in DEEP_GREY_LABELS) == ["L"] * 6 + ["R"] * 6
    names = {DEMO_LABELS[lab][0] for lab in DEEP_GREY_LABELS}
    assert names == {"caudate", "putamen", "globus pallidus", "thalamus", "red nucleus", "substantia nigra"}
    for lab in DEEP_GREY_LABELS:
        name, hemi, chi_nominal, _ = DEMO_LABELS[lab]
        inside = ph.labels == lab
        assert inside.sum() >= 3, name
        assert ph.brain_mask[inside].all()
        assert ph.lut[lab][2] > 0 and abs(ph.lut[lab][2] / chi_nominal - 1) <= 0.1 + 1e-6, name
        # voxel-mean χ: the (subject-scaled) value in the core of the large nuclei; the small
        # ones (GP, RN, SN: 3-8 mm semi-axes) are partial-volumed on the 3 mm grid
        if name in ("caudate", "putamen", "thalamus"):
            assert np.median(ph.chi[inside]) == pytest.approx(ph.lut[lab][2], abs=0.005), name
        assert ph.chi[inside].max() > 0.6 * ph.lut[lab][2], name
        x = _world(ph.affine, inside)[:, 0].mean()
        assert (x < -2) if hemi == "L" else (x > 2), (name, hemi, x)
    # GP > putamen, SN > thalamus (iron ordering)
    assert ph.lut[15][2] > ph.lut[13][2] and ph.lut[21][2] > ph.lut[17][2]


def test_field_decomposition(small_phantom):
    ph = small_phantom
    b = ph.brain_mask
    # conventions: local and background demeaned in the brain; total = local + background + const
    assert abs(ph.local_field[b].mean()) < 1e-5 and abs(ph.background_field[b].mean()) < 1e-5
    resid = (ph.total_field - ph.local_field - ph.background_field)[b]
    assert np.ptp(resid) < 1e-5
    # local field = field of χ·brain alone: an independent FFT (D(0) = 0) on the 1.5 mm grid
    # the small phantom is simulated on, voxel means, demeaned in the brain
    fine = ph.fine
    ss = fine["ss"]
    src = (fine["chi"] * fine["brain"]).astype(np.float64)
    ref = _field_d0_zero(src, (ph.voxel_size[0] / ss,) * 3, ph.b0_dir)
    ref = ref.reshape(72, ss, 72, ss, 48, ss).mean(axis=(1, 3, 5))
    ref -= ref[b].mean()
    err = ref - ph.local_field
    assert np.sqrt((err[b] ** 2).mean()) < 1e-3 * np.sqrt((ref[b] ** 2).mean())
    assert np.abs(err[b]).max() < 1e-2 * np.abs(ref[b]).max()


def test_background_is_strong_near_the_sinus(small_phantom):
    ph = small_phantom
    b = ph.brain_mask
    sinus = ph.labels == 3
    frontal = sinus.copy()
    frontal[sinus] = _world(ph.affine, sinus)[:, 1] > 40  # the frontal sinus (not the mastoids)
    assert frontal.sum() > 20
    dist = ndi.distance_transform_edt(~frontal, sampling=ph.voxel_size)
    near = b & (dist < 30)
    assert near.sum() > 200
    bg, loc = ph.background_field[near], ph.local_field[near]
    assert bg.std() > 20 * np.sqrt((loc**2).mean())  # background ≫ local near the sinus
    assert np.ptp(bg) > 1.0  # ppm: > 380 Hz at 3 T across the frontal brain
    assert ph.background_field[b].std() > 10 * ph.local_field[b].std()
    # the air is the source: inside the sinus the total field is far from the brain's
    assert np.abs(ph.total_field[frontal]).max() > 1.0


def test_signal_magnitude_phase_and_offset(small_phantom, small_gre):
    ph, (sig, offset) = small_phantom, small_gre
    assert sig.shape == (72, 72, 48, 4) and sig.dtype == np.complex64
    assert offset.shape == ph.chi.shape
    wm = ph.labels == 6
    # magnitude decays as exp(-TE R2*) in white matter (log-linear fit against the truth)
    mag = np.abs(sig[wm]).mean(0)
    assert np.all(np.diff(mag) < 0)
    slope = -np.polyfit(ph.tes, np.log(mag), 1)[0]
    assert slope == pytest.approx(ph.lut[6][3], rel=0.1)
    # CSF decays far more slowly than the globus pallidus
    csf = np.abs(sig[np.isin(ph.labels, (7, 8))]).mean(0)
    gp = np.abs(sig[np.isin(ph.labels, (15, 16))]).mean(0)
    assert csf[-1] / csf[0] > gp[-1] / gp[0]
    # phase = 2π γ̄ B0 field TE + offset, in deep WM (no intravoxel dephasing there)
    deep = wm & (np.abs(ph.total_field - np.median(ph.total_field[wm])) < 0.05)
    for e in (0, 3):
        expected = 2 * np.pi * GAMMA_BAR_MHZ_PER_T * ph.b0 * ph.total_field[deep] * ph.tes[e] + offset[deep]
        err = np.angle(sig[deep, e] * np.exp(-1j * expected))
        assert np.median(np.abs(err)) < 0.05
    assert np.ptp(offset[ph.brain_mask]) > 0.5 and np.abs(offset[ph.brain_mask]).max() > 0.1
    # noise: air away from the head is noise only, std ≈ max|signal| / SNR per channel
    air = ndi.distance_transform_edt(ph.labels == 0, sampling=ph.voxel_size) > 10
    sigma = np.abs(sig[air, 0]).mean() / np.sqrt(np.pi / 2)  # Rayleigh mean
    assert sigma == pytest.approx(np.abs(sig).max() / 100.0, rel=0.1)


def test_subject_variation_is_small_and_seeded():
    for seed in range(5):
        (rot, shift), factors = _subject_variation(seed)
        assert np.allclose(rot @ rot.T, np.eye(3)) and np.linalg.det(rot) == pytest.approx(1.0)
        angle = np.rad2deg(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
        assert angle <= 3.0 * np.sqrt(3) and np.abs(shift).max() <= 3.0
        assert set(factors) == set(DEEP_GREY_LABELS)
        assert all(0.9 <= f <= 1.1 for f in factors.values())
    (r0, s0), f0 = _subject_variation(0)
    (r1, s1), f1 = _subject_variation(1)
    assert not np.allclose(s0, s1) and f0 != f1
    assert _subject_variation(0)[1] == f0  # deterministic
    t0 = np.asarray(render_t1w("small", seed=0).dataobj)
    assert np.array_equal(t0, np.asarray(render_t1w("small", seed=0).dataobj))
    assert not np.array_equal(t0, np.asarray(render_t1w("small", seed=1).dataobj))


def test_oblique_b0_direction(small_phantom):
    ph = make_phantom("small", seed=0, oblique_deg=20.0)
    assert np.linalg.norm(ph.b0_dir) == pytest.approx(1.0)
    assert ph.b0_dir == pytest.approx([0.0, np.sin(np.deg2rad(20)), np.cos(np.deg2rad(20))], abs=1e-6)
    rot = ph.affine[:3, :3] / np.linalg.norm(ph.affine[:3, :3], axis=0)
    assert rot @ ph.b0_dir == pytest.approx([0, 0, 1], abs=1e-6)
    assert ph.labels[0, 0, 0] == 0
    # the same anatomy in world space: the brain and the nuclei keep their volumes and centres
    ref = small_phantom
    assert ph.brain_mask.sum() == pytest.approx(ref.brain_mask.sum(), rel=0.02)
    for lab in (13, 14, 17, 18):
        c_obl = _world(ph.affine, ph.labels == lab).mean(0)
        c_ref = _world(ref.affine, ref.labels == lab).mean(0)
        assert np.abs(c_obl - c_ref).max() < 2.0, lab


def test_t1w_motion_and_appearance():
    img = render_t1w("small", seed=0)
    still = np.asarray(img.dataobj)
    assert still.shape == (108, 108, 72) and img.header.get_zooms() == (2.0, 2.0, 2.0)
    assert np.allclose(img.affine[:3, :3] @ ((np.array(still.shape) - 1) / 2) + img.affine[:3, 3], 0)
    moved = np.asarray(render_t1w("small", seed=0, t1w_motion=(0, 0, 0, 6.0, 0, 0)).dataobj)
    # a 6 mm shift along x is 3 voxels of 2 mm
    assert np.corrcoef(np.roll(still, 3, axis=0)[10:-10].ravel(), moved[10:-10].ravel())[0, 1] > 0.95
    # a rotation moves it too, and not like a pure shift
    rotated = np.asarray(render_t1w("small", seed=0, t1w_motion=(0, 0, 10.0, 0, 0, 0)).dataobj)
    assert np.corrcoef(still.ravel(), rotated.ravel())[0, 1] < 0.95
    # T1 contrast (WM > GM > CSF) and not skull-stripped: bright scalp around the skull
    centre = still[44:64, 44:64, 40:50]
    assert centre.mean() > 600  # WM
    line = still[:, 54, 36]
    head = np.flatnonzero(line > 400)
    assert head[0] < 20 and line[head[0]: head[0] + 3].max() > 500  # scalp at the edge of the head


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_ds")
    info = write_demo_dataset(out, size="small", n_subjects=1, seed=0, snr=100.0)
    return out, info


def test_bids_tree_and_sidecars(dataset):
    out, info = dataset
    bids = out / "bids"
    assert info["bids_dir"] == str(bids) and info["truth_dir"] == str(out / "truth")
    desc = json.loads((bids / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0" and desc["Name"]
    assert (bids / "README").read_text().strip()
    rows = list(csv.DictReader((bids / "participants.tsv").open(), delimiter="\t"))
    assert [r["participant_id"] for r in rows] == ["sub-01"]
    anat = bids / "sub-01" / "anat"
    expected = {f"sub-01_echo-{e}_part-{p}_MEGRE.{x}" for e in range(1, 5) for p in ("mag", "phase")
                for x in ("nii.gz", "json")} | {"sub-01_T1w.nii.gz", "sub-01_T1w.json"}
    assert {p.name for p in anat.iterdir()} == expected
    assert {p.name for p in bids.iterdir()} == {"dataset_description.json", "participants.tsv", "README", "sub-01"}
    for e in range(1, 5):
        for part in ("mag", "phase"):
            meta = json.loads((anat / f"sub-01_echo-{e}_part-{part}_MEGRE.json").read_text())
            assert meta["EchoTime"] == pytest.approx(SMALL_TES[e - 1]) and meta["EchoNumber"] == e
            assert meta["MagneticFieldStrength"] == 3.0 and meta["Manufacturer"] == "Siemens"
            assert 0 < meta["RepetitionTime"] < 1 and meta["FlipAngle"] > 0
            assert ("P" if part == "phase" else "M") in meta["ImageType"]
    t1w = nib.load(anat / "sub-01_T1w.nii.gz")
    assert t1w.shape == (108, 108, 72)
    assert json.loads((anat / "sub-01_T1w.json").read_text())["MagneticFieldStrength"] == 3.0


def test_written_images_decode_to_the_simulation(dataset, small_phantom, small_gre):
    out, _ = dataset
    anat = out / "bids" / "sub-01" / "anat"
    sig, _ = small_gre
    mag_ref = np.abs(sig) / np.abs(sig).max() * 4000
    for e in range(4):
        mag_img = nib.load(anat / f"sub-01_echo-{e + 1}_part-mag_MEGRE.nii.gz")
        pha_img = nib.load(anat / f"sub-01_echo-{e + 1}_part-phase_MEGRE.nii.gz")
        assert np.allclose(mag_img.affine, small_phantom.affine) and np.allclose(pha_img.affine, small_phantom.affine)
        mag = np.asarray(mag_img.dataobj)
        pha = np.asarray(pha_img.dataobj)
        assert mag.dtype == np.uint16 and pha.dtype == np.uint16
        assert pha.min() >= 0 and pha.max() <= 4095 and pha.max() > 4000 and pha.min() < 100
        # same seed -> the very same signal (determinism of phantom, signal and noise)
        assert np.abs(mag.astype(np.float64) - mag_ref[..., e]).max() <= 0.5 + 1e-3
        decoded = pha.astype(np.float64) / 4096 * 2 * np.pi - np.pi
        wrapped = np.angle(np.exp(1j * (decoded - np.angle(sig[..., e]))))
        assert np.abs(wrapped).max() <= np.pi / 4096 + 1e-5
    assert mag_ref.max() == pytest.approx(4000)


def test_truth_outside_bids(dataset, small_phantom):
    out, info = dataset
    truth = out / "truth" / "sub-01"
    files = info["subjects"]["01"]
    for name in TRUTH_NAMES:
        path = truth / f"sub-01_{name}.nii.gz"
        assert path.is_file() and files[name] == str(path)
    assert not list((out / "bids").rglob("*Chimap*")) and not list((out / "bids").rglob("*dseg*"))
    ph = small_phantom
    # the written truth is the phantom (made again inside write_demo_dataset: deterministic)
    chi = nib.load(files["Chimap"])
    assert np.allclose(chi.affine, ph.affine) and np.array_equal(np.asarray(chi.dataobj), ph.chi)
    assert np.array_equal(np.asarray(nib.load(files["dseg"]).dataobj), ph.labels)
    assert np.array_equal(np.asarray(nib.load(files["desc-brain_mask"]).dataobj) > 0, ph.brain_mask)
    assert np.array_equal(np.asarray(nib.load(files["desc-localfield_fieldmap"]).dataobj), ph.local_field)
    # look-up tables: nominal (dataset level) and this subject's χ
    rows = list(csv.DictReader((out / "truth" / "dseg.tsv").open(), delimiter="\t"))
    assert list(rows[0]) == ["index", "name", "hemisphere", "chi_ppm", "r2star_per_s"]
    assert {int(r["index"]) for r in rows} == set(DEMO_LABELS)
    assert all(r["hemisphere"] in ("L", "R", "n/a") for r in rows)
    sub_rows = {int(r["index"]): r for r in csv.DictReader(open(files["dseg_tsv"]), delimiter="\t")}
    for lab in DEEP_GREY_LABELS:
        assert float(sub_rows[lab]["chi_ppm"]) == pytest.approx(ph.lut[lab][2], rel=1e-5)
    # never overwrite silently
    with pytest.raises(FileExistsError):
        write_demo_dataset(out, size="small", n_subjects=1)

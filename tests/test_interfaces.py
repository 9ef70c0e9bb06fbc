"""Nipype interfaces on tiny NIfTIs in tmp_path (real files, no mocks)."""

import json

import nibabel as nib
import numpy as np
import pytest

from bidsutils import write_image
from qsmprep.errors import InputError
from qsmprep.interfaces.derivatives import DerivativesSink
from qsmprep.interfaces.io import LoadGRE
from qsmprep.qsm.masking import dilate_mm


def _load(path):
    img = nib.load(path)
    return np.asarray(img.dataobj), img


def test_load_gre_int12_phase(tmp_path):
    rng = np.random.default_rng(1)
    true_phase = rng.uniform(-np.pi, np.pi, size=(2, 6, 5, 4)).astype(np.float32)
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    mags, phases = [], []
    for e in range(2):
        mags.append(write_image(tmp_path / f"m{e}.nii.gz", (100 * (e + 1) * np.ones((6, 5, 4))).astype(np.uint16), aff))
        ints = np.round((true_phase[e] + np.pi) / (2 * np.pi) * 4096).astype(np.int64) % 4096
        phases.append(write_image(tmp_path / f"p{e}.nii.gz", ints.astype(np.uint16), aff))
    res = LoadGRE(magnitude=[str(p) for p in mags], phase=[str(p) for p in phases]).run(cwd=tmp_path)
    phase, img = _load(res.outputs.phase)
    mag, _ = _load(res.outputs.magnitude)
    assert phase.shape == (6, 5, 4, 2) and mag.shape == (6, 5, 4, 2)
    assert np.allclose(img.affine, aff)
    assert res.outputs.phase_units == "int12"
    diff = np.angle(np.exp(1j * (phase - np.moveaxis(true_phase, 0, -1))))
    assert np.abs(diff).max() < 2 * np.pi / 4096
    assert res.outputs.b0_dir == pytest.approx([0, 0, 1])
    assert res.outputs.voxel_size == pytest.approx([1.5, 1.5, 2.0])


def test_load_gre_real_imag(tmp_path):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((5, 5, 5)) + 1j * rng.standard_normal((5, 5, 5))
    re = write_image(tmp_path / "re.nii.gz", z.real.astype(np.float32))
    im = write_image(tmp_path / "im.nii.gz", z.imag.astype(np.float32))
    res = LoadGRE(real=[str(re)], imag=[str(im)]).run(cwd=tmp_path)
    assert np.allclose(_load(res.outputs.magnitude)[0][..., 0], np.abs(z), rtol=1e-5)
    assert np.allclose(np.exp(1j * _load(res.outputs.phase)[0][..., 0]), np.exp(1j * np.angle(z)), atol=1e-5)


def test_load_gre_nan_names_file(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    mag = write_image(tmp_path / "mag_with_nan.nii.gz", data)
    ph = write_image(tmp_path / "ph.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match=r"mag_with_nan.nii.gz: 1 voxels are NaN"):
        LoadGRE(magnitude=[str(mag)], phase=[str(ph)]).run(cwd=tmp_path)


def test_load_gre_negative_magnitude(tmp_path):
    mag = write_image(tmp_path / "mag.nii.gz", -np.ones((4, 4, 4), np.float32))
    ph = write_image(tmp_path / "ph.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match="negative values"):
        LoadGRE(magnitude=[str(mag)], phase=[str(ph)]).run(cwd=tmp_path)


def test_derivatives_sink_names_sidecar_and_dtype(tmp_path):
    src = write_image(tmp_path / "chi.nii.gz", np.full((3, 3, 3), 0.05, np.float64))
    res = DerivativesSink(
        in_file=str(src), out_dir=str(tmp_path / "out"), entities={"subject": "01", "session": "a", "run": "1"},
        suffix="Chimap", units="ppm", meta={"ReferenceRegion": "whole-brain"},
        meta_extra=[{"DipoleInversion": "tkd"}, {"ReferenceRegion": "csf"}],
        sources=["bids:raw:sub-01/anat/x.nii.gz"],
    ).run(cwd=tmp_path)
    out = tmp_path / "out/sub-01/ses-a/anat/sub-01_ses-a_run-1_Chimap.nii.gz"
    assert res.outputs.out_file == str(out) and out.is_file()
    assert nib.load(out).get_data_dtype() == np.float32
    meta = json.loads(out.with_name("sub-01_ses-a_run-1_Chimap.json").read_text())
    assert meta == {"Units": "ppm", "ReferenceRegion": "csf", "DipoleInversion": "tkd",
                    "Sources": ["bids:raw:sub-01/anat/x.nii.gz"]}
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]

    mask = write_image(tmp_path / "m.nii.gz", np.ones((3, 3, 3), np.float32))
    res = DerivativesSink(in_file=str(mask), out_dir=str(tmp_path / "out"), entities={"subject": "01"},
                          suffix="mask", desc="brain").run(cwd=tmp_path)
    assert res.outputs.out_file.endswith("sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    assert nib.load(res.outputs.out_file).get_data_dtype() == np.uint8


def test_stage_interfaces_chain_on_small_phantom(tmp_path, small_phantom, small_gre):
    """Every stage interface on real files: shapes, affines, units and sidecar info."""
    from qsmprep.interfaces.background import BackgroundRemoval
    from qsmprep.interfaces.echoes import EchoAverage, FitField, R2Star
    from qsmprep.interfaces.inversion import DipoleInversion, ReferenceChi
    from qsmprep.interfaces.masking import BrainMask
    from qsmprep.interfaces.unwrap import RemovePhaseOffset, UnwrapPhase

    ph, (sig, _) = small_phantom, small_gre
    mags, phases = [], []
    for e in range(sig.shape[-1]):
        mags.append(str(write_image(tmp_path / f"m{e}.nii.gz", np.abs(sig[..., e]).astype(np.float32), ph.affine)))
        phases.append(str(write_image(tmp_path / f"p{e}.nii.gz", np.angle(sig[..., e]).astype(np.float32), ph.affine)))
    tes = [float(t) for t in ph.tes]
    load = LoadGRE(magnitude=mags, phase=phases).run(cwd=tmp_path).outputs
    assert load.phase_units == "radians" and load.b0_dir == pytest.approx(list(ph.b0_dir))
    off = RemovePhaseOffset(phase=load.phase, magnitude=load.magnitude, echo_times=tes).run(cwd=tmp_path).outputs
    assert _load(off.phase)[0].shape == sig.shape
    unw = UnwrapPhase(phase=load.phase, magnitude=load.magnitude, echo_times=tes,
                      method="romeo").run(cwd=tmp_path).outputs
    assert unw.info["UnwrappingMethod"] == "romeo" and _load(unw.quality)[0].shape == sig.shape[:3]
    fit = FitField(unwrapped=unw.unwrapped, magnitude=load.magnitude, echo_times=tes, b0=3.0).run(cwd=tmp_path).outputs
    assert fit.info["EchoCombination"] == "linear" and fit.info["FieldMisfitReferenceVoxels"] > 0
    assert np.all(_load(fit.uncertainty)[0] >= _load(fit.noise)[0])    # the data weights' std: noise, misfit
    r2 = R2Star(magnitude=load.magnitude, echo_times=tes).run(cwd=tmp_path).outputs
    r2s = _load(r2.r2star)[0]
    wm = ph.labels == 6
    assert np.median(np.abs(r2s[wm] - 21.0) / 21.0) < 0.1
    avg = EchoAverage(magnitude=load.magnitude).run(cwd=tmp_path).outputs
    msk = BrainMask(magnitude=avg.average, quality=unw.quality, params={"refine": True}).run(cwd=tmp_path).outputs
    tight, filled = _load(msk.mask)[0] > 0, _load(msk.mask_filled)[0] > 0
    # the refinement removes the partial-volume skull inside and grows into reliable phase at
    # most grow_mm outside the (reported) filled mask; the sidecar counts what it added
    params = msk.info["MaskingParameters"]
    assert tight.sum() < filled.sum() and (filled & ~tight).any()
    assert not (tight & ~dilate_mm(filled, ph.voxel_size, params["grow_mm"])).any()
    assert params["grown_voxels"] == int((tight & ~filled).sum())
    dice = 2 * (filled & ph.brain_mask).sum() / (filled.sum() + ph.brain_mask.sum())
    assert dice > 0.9
    bg = BackgroundRemoval(field=fit.field, mask=msk.mask, noise=fit.noise, b0_dir=load.b0_dir).run(cwd=tmp_path).outputs
    assert bg.info["BackgroundRemoval"] == "vsharp"
    inv = DipoleInversion(local_field=bg.local_field, mask=bg.mask, b0_dir=load.b0_dir).run(cwd=tmp_path).outputs
    assert inv.info["DipoleInversionParameters"]["threshold"] == 0.19
    # nlTV's phase scale comes from the acquisition (2π γ̄ B0 ΔTE) and is recorded
    nl = DipoleInversion(local_field=bg.local_field, mask=bg.mask, b0_dir=load.b0_dir, method="nltv",
                         echo_times=tes, b0=3.0).run(cwd=tmp_path).outputs
    from qsmprep.qsm.echoes import phase_per_ppm

    assert nl.info["DipoleInversionParameters"]["phase_scale"] == pytest.approx(phase_per_ppm(tes, 3.0))
    assert nl.info["DipoleInversionParameters"]["data_term"] == "nonlinear"
    # so is WH-QSM's, whose nonlinear data term is its default (not named in params)
    wh = DipoleInversion(local_field=bg.local_field, mask=bg.mask, b0_dir=load.b0_dir, method="whqsm",
                         echo_times=tes, b0=3.0).run(cwd=tmp_path).outputs
    assert wh.info["DipoleInversionParameters"]["phase_scale"] == pytest.approx(phase_per_ppm(tes, 3.0))
    assert wh.info["DipoleInversionParameters"]["data_term"] == "nonlinear"
    ref = ReferenceChi(chi=inv.chi, mask=bg.mask).run(cwd=tmp_path).outputs
    chi, img = _load(ref.chi)
    valid = _load(bg.mask)[0] > 0
    assert abs(chi[valid].mean()) < 1e-4 and ref.info["ReferenceRegion"] == "whole-brain"
    assert np.allclose(img.affine, ph.affine) and img.get_data_dtype() == np.float32
    # per-echo inversion: 4D local fields in, one averaged χ out
    pe = FitField(unwrapped=unw.unwrapped, magnitude=load.magnitude, echo_times=tes, b0=3.0,
                  method="per-echo").run(cwd=tmp_path).outputs
    bg4 = BackgroundRemoval(field=pe.echo_fields, mask=msk.mask, b0_dir=load.b0_dir).run(cwd=tmp_path).outputs
    assert _load(bg4.local_field)[0].shape == sig.shape
    inv4 = DipoleInversion(local_field=bg4.local_field, mask=bg4.mask, b0_dir=load.b0_dir).run(cwd=tmp_path).outputs
    assert _load(inv4.chi)[0].shape == sig.shape[:3] and "per-echo" in inv4.info["DipoleInversionParameters"]["EchoStrategy"]


def test_bet_vertical_axis_comes_from_the_affine(tmp_path, small_phantom, small_gre):
    """BET's g needs "up": with voxel axis k stored inferior→superior flipped (negative
    k step in the affine) the interface passes −k as the vertical, and the same head gives
    the same mask either way."""
    from qsmprep.interfaces.masking import BrainMask

    ph, (sig, _) = small_phantom, small_gre
    mag = np.sqrt(np.mean(np.abs(sig) ** 2, axis=-1)).astype(np.float32)
    flip = ph.affine.copy()
    flip[:3, 2] *= -1
    flip[:3, 3] = ph.affine[:3, 3] + ph.affine[:3, 2] * (mag.shape[2] - 1)
    masks = []
    for name, data, affine in (("up", mag, ph.affine), ("down", mag[..., ::-1], flip)):
        path = tmp_path / f"{name}.nii"
        (tmp_path / name).mkdir()
        nib.Nifti1Image(np.ascontiguousarray(data), affine).to_filename(path)
        out = BrainMask(magnitude=str(path), method="bet", params={"g": 0.3, "refine": False}).run(
            cwd=tmp_path / name).outputs
        vertical = out.info["MaskingParameters"]["vertical"]
        assert np.allclose(vertical, [0, 0, 1] if name == "up" else [0, 0, -1], atol=1e-6)
        m = np.asarray(nib.load(out.mask_filled).dataobj) > 0
        masks.append(m if name == "up" else m[..., ::-1])
    dice = 2 * (masks[0] & masks[1]).sum() / (masks[0].sum() + masks[1].sum())
    assert dice > 0.99


def test_denoise_interface_writes_the_magnitude_and_records_itself(tmp_path):
    from qsmprep.interfaces.echoes import DenoiseMagnitude

    rng = np.random.default_rng(0)
    decay = np.exp(-np.array([0.004, 0.009, 0.014, 0.019]) * 30.0)
    mag = np.abs(100.0 * decay + rng.normal(0, 2.0, (12, 12, 10, 4))).astype(np.float32)
    path = write_image(tmp_path / "mag.nii.gz", mag, np.diag([2.0, 2.0, 2.0, 1.0]))
    out = DenoiseMagnitude(magnitude=str(path), params={"patch_radius": 1}).run(cwd=tmp_path).outputs
    den, img = _load(out.magnitude)
    assert den.shape == mag.shape and np.allclose(img.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert np.abs(den - 100.0 * decay).mean() < 0.5 * np.abs(mag - 100.0 * decay).mean()
    assert out.info["MagnitudeDenoising"] == "mppca" and out.info["PhaseDenoising"] == "none"
    assert out.info["MagnitudeDenoisingParameters"] == {"patch_radius": 1}
    assert 1.0 < out.info["MagnitudeNoiseSigmaMedian"] < 3.0

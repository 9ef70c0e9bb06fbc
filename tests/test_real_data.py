"""Real scanner data (issue 16): phase units, partial coverage, user masks, 4D files, QC.

Every case is built from the small demo phantom, re-encoded the way scanners and
converters store it, and either gives the same χ as the vendor-integer original or stops
with the documented message — never a silent wrong map.
"""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmprep.analysis.validation import compare_roi_means
from qsmprep.cli.run import main
from qsmprep.demo import DEEP_GREY_LABELS
from qsmprep.interfaces.io import LoadGRE
from qsmprep.qsm.phase import PhaseUnitsError, detect_phase_units, scale_phase, wrap


# --- the detection rule on the phantom's phase ------------------------------------------------
@pytest.fixture(scope="module")
def demo_phase(small_gre):
    return np.angle(small_gre[0]).astype(np.float32)


ENCODINGS = {
    # name: (encode radians -> stored values, unit auto must find)
    "radians": (lambda r: r, "radians"),
    "degrees": (lambda r: np.rad2deg(r), "degrees"),
    "int12 integers": (lambda r: (np.rint((r + np.pi) / (2 * np.pi) * 4096) % 4096).astype(np.uint16), "int12"),
    "int12 floats": (lambda r: (np.rint((r + np.pi) / (2 * np.pi) * 4096) % 4096).astype(np.float32), "int12"),
    "int12-signed": (lambda r: (np.rint((r + np.pi) / (2 * np.pi) * 8192) % 8192 - 4096).astype(np.int16),
                     "int12-signed"),
    "uint16": (lambda r: (np.rint((r + np.pi) / (2 * np.pi) * 65536) % 65536).astype(np.uint16), "uint16"),
    # the real 3 T export of the issue: about ±0.0037
    "scaled float": (lambda r: (r * (0.0037 / np.pi)).astype(np.float32), "rescale"),
    "scaled float with offset": (lambda r: (r * 123.4 - 77.0).astype(np.float32), "rescale"),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_auto_finds_each_encoding_and_recovers_the_phase(demo_phase, name):
    encode, expected = ENCODINGS[name]
    stored = encode(demo_phase)
    units, reason = detect_phase_units(stored)
    assert units == expected, reason
    rad = scale_phase(stored, units=units, value_range=(float(stored.min()), float(stored.max())))
    # within the encoding's quantisation step (and float32 rounding); "rescale" maps the stored
    # range onto [-π, π), so it is off by as much as the phase's own extremes miss ±π (the data
    # do not reach them exactly: 3e-5 rad on this phantom) — the method's exact bound
    step = {"int12": 2 * np.pi / 4096, "int12-signed": 2 * np.pi / 8192, "uint16": 2 * np.pi / 65536}.get(units, 0)
    if units == "rescale":
        step = 2 * max(float(demo_phase.min()) + np.pi, np.pi - float(demo_phase.max()))
    assert np.abs(wrap(rad - demo_phase)).max() <= step / 2 + 2e-5


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_each_encoding_stored_as_nifti_loads_as_the_vendor_integers_do(demo_phase, small_phantom, tmp_path, name):
    """Through NIfTI files and the loader node (dtype, header scaling): the same radians as int12.

    The rest of the pipeline only sees these radians, so the same phase gives the same χ
    (the scaled-float case is also run end to end below)."""
    encode, expected = ENCODINGS[name]
    phases = demo_phase[..., :2]
    mag = np.ones(phases.shape, np.float32)
    loaded = {}
    for label, enc in (("reference", ENCODINGS["int12 integers"][0]), (name, encode)):
        d = tmp_path / label.replace(" ", "_")
        d.mkdir()
        stored = enc(phases)
        files = [_save(d / f"phase{e}.nii.gz", stored[..., e], small_phantom.affine) for e in range(2)]
        mags = [_save(d / f"mag{e}.nii.gz", mag[..., e], small_phantom.affine) for e in range(2)]
        res = LoadGRE(magnitude=mags, phase=files).run(cwd=str(d))
        loaded[label] = (nib.load(res.outputs.phase).get_fdata(), res.outputs.phase_info)
    ref, (got, info) = loaded["reference"][0], loaded[name]
    assert info["PhaseUnits"] == expected and info["PhaseUnitsSource"].startswith("auto-detected")
    assert np.abs(wrap(got - ref)).max() <= 2 * np.pi / 4096 + 1e-4  # int12's own quantisation


def test_a_small_span_radians_image_is_refused_not_guessed(small_phantom):
    """Short TE, background zeroed: within ±π but far from 2π — not certain radians, not rescaled."""
    ph = small_phantom
    field_rad = 2 * np.pi * 42.577478 * ph.b0 * ph.total_field * 0.0005
    stored = np.where(ph.brain_mask, wrap(field_rad), 0).astype(np.float32)
    with pytest.raises(PhaseUnitsError, match="--phase-units radians"):
        detect_phase_units(stored)
    # the user can say what it is
    assert np.abs(scale_phase(stored, units="radians") - stored).max() < 1e-6


def test_what_fits_no_rule_is_refused_with_the_range(rng=np.random.default_rng(3)):
    peaked = rng.normal(100.0, 5.0, 50_000)  # not phase at all (e.g. a magnitude given as phase)
    with pytest.raises(PhaseUnitsError, match=r"fit no known phase unit.*--phase-units"):
        detect_phase_units(peaked)
    with pytest.raises(ValueError, match="not radians"):
        scale_phase(np.array([0.0, 4095.0]), units="radians")
    with pytest.raises(ValueError, match="not degrees"):
        scale_phase(np.array([0.0, 4095.0]), units="degrees")


# --- the loader: 4D files and the phase record -------------------------------------------------
def _save(path, data, affine):
    nib.Nifti1Image(np.asarray(data), affine).to_filename(str(path))
    return str(path)


def test_loader_4d_equals_per_echo_for_mag_phase_and_real_imag(small_gre, small_phantom, tmp_path):
    sig = small_gre[0][..., :3]
    aff = small_phantom.affine
    outs = {}
    for layout in ("split", "4d"):
        d = tmp_path / layout
        d.mkdir()
        files = {}
        for part, data in (("mag", np.abs(sig)), ("phase", np.angle(sig)), ("real", sig.real), ("imag", sig.imag)):
            data = data.astype(np.float32)
            if layout == "4d":
                files[part] = [_save(d / f"{part}.nii", data, aff)]
            else:
                files[part] = [_save(d / f"{part}{e}.nii", data[..., e], aff) for e in range(data.shape[-1])]
        for kind, inputs in (("polar", {"magnitude": files["mag"], "phase": files["phase"]}),
                             ("complex", {"real": files["real"], "imag": files["imag"]})):
            (d / kind).mkdir()
            res = LoadGRE(**inputs).run(cwd=str(d / kind))
            outs[layout, kind] = (nib.load(res.outputs.magnitude).get_fdata(), nib.load(res.outputs.phase).get_fdata(),
                                  res.outputs.phase_info)
    for kind in ("polar", "complex"):
        (m1, p1, i1), (m2, p2, i2) = outs["split", kind], outs["4d", kind]
        assert m1.shape == m2.shape == sig.shape
        assert np.array_equal(m1, m2) and np.array_equal(p1, p2) and i1 == i2
    assert outs["split", "polar"][2]["PhaseUnits"] == "radians"
    assert outs["split", "complex"][2]["PhaseUnits"] == "radians (from real/imag)"


# --- end to end through the CLI ----------------------------------------------------------------
@pytest.fixture(scope="module")
def demo1(tmp_path_factory):
    from bidsutils import demo_with_tkd_preset

    root = tmp_path_factory.mktemp("realdata")
    info, preset = demo_with_tkd_preset(root)
    return {"root": root, "bids": Path(info["bids_dir"]), "truth": Path(info["truth_dir"]) / "sub-01",
            "tkd": preset}


def _participant(bids, out, work, *extra):
    return main([str(bids), str(out), "participant", "-w", str(work), "--no-coreg", "--nprocs", "2", *extra])


def _chi(out, prefix="sub-01"):
    return nib.load(Path(out) / "sub-01" / "anat" / f"{prefix}_Chimap.nii.gz").get_fdata()


def _deep_grey(chi, truth_dir, mask=None):
    chi_true = nib.load(truth_dir / "sub-01_Chimap.nii.gz").get_fdata()
    labels = np.asarray(nib.load(truth_dir / "sub-01_dseg.nii.gz").dataobj).astype(int)
    return compare_roi_means(chi, chi_true, labels, chi != 0 if mask is None else mask, DEEP_GREY_LABELS)


def _walk(obj):
    """Every (key, value) of a nested JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


@pytest.fixture(scope="module")
def reference_run(demo1):
    """The vendor-integer original (Siemens 0..4095), TKD: what every re-encoding must reproduce."""
    out = demo1["root"] / "out-ref"
    assert _participant(demo1["bids"], out, demo1["root"] / "work-ref", "--config", str(demo1["tkd"])) == 0
    return out


def _copy_bids(demo1, name):
    dst = demo1["root"] / name
    shutil.copytree(demo1["bids"], dst)
    return dst


def _reencode_phase(bids, encode):
    for path in sorted((bids / "sub-01" / "anat").glob("*_part-phase_MEGRE.nii.gz")):
        img = nib.load(path)
        rad = scale_phase(np.asarray(img.dataobj), units="int12")
        nib.Nifti1Image(encode(rad), img.affine).to_filename(path)


@pytest.mark.e2e
def test_reference_run_records_units_everywhere_and_passes_qc(reference_run, demo1):
    result = _deep_grey(_chi(reference_run), demo1["truth"])
    assert result["r"] > 0.95
    anat = reference_run / "sub-01" / "anat"
    sidecars = sorted(anat.glob("*.json"))
    nifti_sidecars = [p for p in sidecars if p.with_suffix(".nii.gz").exists() or
                      Path(str(p)[:-5] + ".nii.gz").exists()]
    assert len(nifti_sidecars) >= 8
    for path in nifti_sidecars:
        meta = json.loads(path.read_text())
        assert meta["PhaseUnits"] == "int12", path.name
        assert meta["PhaseRawRange"] == [0.0, 4095.0], path.name
        assert meta["PhaseUnitsSource"].startswith("auto-detected"), path.name
    qc = json.loads((anat / "sub-01_desc-qc_metrics.json").read_text())
    assert qc["PhaseUnits"] == "int12"
    m = qc["Metrics"]
    assert m["phase_units"]["Status"] == "pass" and m["partial_coverage"]["Value"] is False
    assert 0.05 < m["mask_fraction_fov"]["Value"] < 0.9 and m["mask_fraction_fov"]["Status"] == "pass"
    assert m["phase_jump_fraction"]["Status"] == "pass" and m["chi_range_ppm"]["Status"] == "pass"
    assert 0.5 < m["field_residual_over_noise"]["Value"] and m["field_residual_over_noise"]["Status"] == "pass"
    # the growth's QC metric is the sidecar's grown_voxels over the filled (reported) mask
    grown = json.loads((anat / "sub-01_desc-brain_mask.json").read_text())
    grown = next(v for k, v in _walk(grown) if k == "grown_voxels")
    filled = int((np.asarray(nib.load(anat / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0).sum())
    assert m["mask_growth_added_fraction"]["Value"] == pytest.approx(grown / filled, abs=1e-5)
    assert m["mask_growth_added_fraction"]["Status"] == "pass"
    for entry in m.values():
        assert entry["Threshold"] and entry["Description"] and entry["Status"] in ("pass", "warn", "fail", "n/a")


@pytest.mark.e2e
def test_scaled_float_phase_is_rescaled_with_a_warning_and_gives_the_same_chi(demo1, reference_run, capfd):
    """The issue's real 3 T export (scaled floats, about ±0.0037) used to be read as radians: χ ≈ 0."""
    bids = _copy_bids(demo1, "bids-scaled")
    _reencode_phase(bids, lambda rad: (rad * (0.0037 / np.pi)).astype(np.float32))
    out = demo1["root"] / "out-scaled"
    assert _participant(bids, out, demo1["root"] / "work-scaled", "--config", str(demo1["tkd"])) == 0
    captured = capfd.readouterr()
    assert "rescale" in captured.out + captured.err  # the warning reaches the terminal by default
    chi, ref = _chi(out), _chi(reference_run)
    assert _deep_grey(chi, demo1["truth"])["r"] > 0.95
    inside = ref != 0
    assert np.corrcoef(chi[inside], ref[inside])[0, 1] > 0.999
    meta = json.loads((out / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    assert meta["PhaseUnits"] == "rescale" and meta["PhaseRawRange"][1] == pytest.approx(0.0037, rel=1e-3)
    qc = json.loads((out / "sub-01" / "anat" / "sub-01_desc-qc_metrics.json").read_text())
    assert qc["Status"] in ("warn", "fail") and qc["Metrics"]["phase_units"]["Status"] == "warn"
    assert any("rescale" in w for w in qc["Warnings"])


@pytest.mark.e2e
def test_small_span_radians_stops_with_the_documented_message(demo1, capsys):
    bids = _copy_bids(demo1, "bids-smallspan")
    # radians of a short-TE scan with the background zeroed (as some exports do): span ≈ 1 rad
    for path in sorted((bids / "sub-01" / "anat").glob("*_part-phase_MEGRE.nii.gz")):
        img = nib.load(path)
        mag = np.asarray(nib.load(str(path).replace("part-phase", "part-mag")).dataobj)
        rad = scale_phase(np.asarray(img.dataobj), units="int12") * 0.15
        nib.Nifti1Image(np.where(mag > 0.2 * mag.max(), rad, 0).astype(np.float32), img.affine).to_filename(path)
    rc = _participant(bids, demo1["root"] / "out-smallspan", demo1["root"] / "work-smallspan")
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("qsmprep: error")]
    assert len(lines) == 1, err
    assert "part-phase_MEGRE" in lines[0] and "--phase-units" in lines[0] and "Traceback" not in err


@pytest.mark.e2e
def test_4d_files_with_a_mask_from_derivatives_give_the_reference_chi(demo1, reference_run, capsys):
    """4D magnitude + phase (EchoTime a list) and the reference run's own masks via --derivatives."""
    bids = _copy_bids(demo1, "bids-4d")
    anat = bids / "sub-01" / "anat"
    for part in ("mag", "phase"):
        files = sorted(anat.glob(f"sub-01_echo-*_part-{part}_MEGRE.nii.gz"))
        imgs = [nib.load(f) for f in files]
        tes = [json.loads(Path(str(f).replace(".nii.gz", ".json")).read_text())["EchoTime"] for f in files]
        meta = json.loads(Path(str(files[0]).replace(".nii.gz", ".json")).read_text())
        data = np.stack([np.asarray(i.dataobj) for i in imgs], axis=-1)
        for f in files:
            f.unlink()
            Path(str(f).replace(".nii.gz", ".json")).unlink()
        nib.Nifti1Image(data, imgs[0].affine).to_filename(anat / f"sub-01_part-{part}_MEGRE.nii.gz")
        meta["EchoTime"] = tes
        meta.pop("EchoNumber", None)
        (anat / f"sub-01_part-{part}_MEGRE.json").write_text(json.dumps(meta))
    out = demo1["root"] / "out-4d"
    # BIDS wants echo-<n> on every MEGRE file: the validator refuses the dataset, naming them ...
    assert _participant(bids, out, demo1["root"] / "work-4d", "--config", str(demo1["tkd"])) == 2
    err = capsys.readouterr().err
    assert "MISSING_REQUIRED_ENTITY" in err and "sub-01_part-phase_MEGRE" in err and "--skip-bids-validation" in err
    # ... and qsmprep reads them all the same when told to go on
    assert _participant(bids, out, demo1["root"] / "work-4d", "--config", str(demo1["tkd"]),
                        "--derivatives", str(reference_run), "--skip-bids-validation") == 0
    assert np.allclose(_chi(out), _chi(reference_run), atol=1e-6)
    meta = json.loads((out / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    assert [e["Volume"] for e in meta["EchoSources"]] == [0, 1, 2, 3]
    assert all(e["Source"].endswith("sub-01_part-mag_MEGRE.nii.gz") for e in meta["EchoSources"])
    qc = json.loads((out / "sub-01" / "anat" / "sub-01_desc-qc_metrics.json").read_text())
    assert qc["Metrics"]["mask_source"]["Value"].startswith("user mask (--derivatives")


@pytest.mark.e2e
def test_a_mask_in_another_grid_or_for_several_acquisitions_is_refused(demo1, tmp_path, capsys):
    small = tmp_path / "mask.nii.gz"
    nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.eye(4)).to_filename(small)
    rc = _participant(demo1["bids"], tmp_path / "out", tmp_path / "work", "--mask", str(small))
    err = capsys.readouterr().err
    assert rc == 2 and "mask.nii.gz" in err and "grid" in err and "Traceback" not in err


def _crop(bids, box):
    for path in sorted((bids / "sub-01" / "anat").glob("*_MEGRE.nii.gz")):
        img = nib.load(path)
        start = np.array([s.start for s in box])
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ start + img.affine[:3, 3]
        nib.Nifti1Image(np.asarray(img.dataobj)[box], affine).to_filename(path)


@pytest.mark.e2e
def test_partial_coverage_slab_keeps_the_tissue_and_is_flagged(demo1):
    """A slab inside the head (no air in the field of view): the mask keeps the imaged tissue."""
    box = (slice(22, 50), slice(16, 54), slice(8, 36))
    labels_full = np.asarray(nib.load(demo1["truth"] / "sub-01_dseg.nii.gz").dataobj)
    assert not np.isin(labels_full[box], (0, 3)).any()  # no air at all in the slab
    bids = _copy_bids(demo1, "bids-slab")
    _crop(bids, box)
    out = demo1["root"] / "out-slab"
    assert _participant(bids, out, demo1["root"] / "work-slab") == 0  # the default pipeline
    anat = out / "sub-01" / "anat"
    mask = nib.load(anat / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    brain = nib.load(demo1["truth"] / "sub-01_desc-brain_mask.nii.gz").get_fdata()[box] > 0
    assert (mask & brain).sum() >= 0.9 * brain.sum()
    chi = _chi(out)
    chi_true = nib.load(demo1["truth"] / "sub-01_Chimap.nii.gz").get_fdata()[box]
    labels = labels_full[box].astype(int)
    present = [lab for lab in DEEP_GREY_LABELS if ((labels == lab) & (chi != 0)).sum() >= 5]
    assert len(present) >= 4
    result = compare_roi_means(chi, chi_true, labels, chi != 0, present)
    assert np.abs(result["error"]).max() < 0.02, result
    qc = json.loads((anat / "sub-01_desc-qc_metrics.json").read_text())
    assert qc["Metrics"]["partial_coverage"]["Value"] is True
    assert qc["Metrics"]["partial_coverage"]["Status"] == "warn"
    assert qc["Metrics"]["mask_fraction_fov"]["Status"] == "warn"  # > 90 % of the field of view
    assert qc["Metrics"]["mask_source"]["Status"] == "warn"  # the fallback from Otsu
    meta = json.loads((anat / "sub-01_desc-brain_mask.json").read_text())
    assert "partial coverage" in meta["MaskingParameters"]["fallback"]
    html = (out / "sub-01.html").read_text()
    assert "partial coverage" in html and "No errors" not in html


# --- 4D files: what collect_gre accepts and refuses --------------------------------------------
def _make_4d(root, n_vol=3, tes=(0.005, 0.01, 0.015), parts=("mag", "phase")):
    from bidsutils import make_tiny_bids, write_image, write_json

    make_tiny_bids(root, n_echoes=0)
    rng = np.random.default_rng(0)
    for part in parts:
        data = rng.integers(1, 4096, size=(12, 12, 10, n_vol)).astype(np.uint16)
        write_image(root / "sub-01" / "anat" / f"sub-01_part-{part}_MEGRE.nii.gz", data)
        write_json(root / "sub-01" / "anat" / f"sub-01_part-{part}_MEGRE.json",
                   {"EchoTime": list(tes), "MagneticFieldStrength": 3.0})
    return root


def test_collect_gre_splits_a_4d_file_by_its_echo_time_list(tmp_path):
    from qsmprep.bids import collect_gre

    (rec,) = collect_gre(_make_4d(tmp_path / "ok"))
    assert rec.echo_times == [0.005, 0.01, 0.015] and rec.n_echoes == 3 and rec.shape == (12, 12, 10)
    assert [v for _, v in rec.echo_volumes] == [0, 1, 2] and len(rec.magnitude) == 1


@pytest.mark.parametrize("case, match", [
    ("volumes", r"lists 2 echo times .* 4D image with 2 volumes is expected, got shape \(12, 12, 10, 3\)"),
    ("no list", r"expected a 3D image .* EchoTime as a list"),
    ("real/imag", None),
])
def test_collect_gre_4d_mismatches_are_named(tmp_path, case, match):
    from qsmprep.bids import collect_gre
    from qsmprep.errors import InputError

    if case == "volumes":
        root = _make_4d(tmp_path / "d", n_vol=3, tes=(0.005, 0.01))
    elif case == "no list":
        root = _make_4d(tmp_path / "d", tes=(0.005,))
        for part in ("mag", "phase"):
            p = root / "sub-01" / "anat" / f"sub-01_part-{part}_MEGRE.json"
            p.write_text(json.dumps({"EchoTime": 0.005, "MagneticFieldStrength": 3.0}))
    else:  # real/imag 4D files are accepted the same way
        (rec,) = collect_gre(_make_4d(tmp_path / "d", parts=("real", "imag")))
        assert rec.is_complex and rec.n_echoes == 3
        return
    with pytest.raises(InputError, match=match):
        collect_gre(root)


def test_an_empty_dataset_is_one_input_error(tmp_path):
    from qsmprep.bids import collect_gre
    from qsmprep.errors import InputError

    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    with pytest.raises(InputError, match="no participants"):
        collect_gre(tmp_path)


@pytest.mark.e2e
def test_group_level_without_roi_tables_writes_the_qc_table(demo1, reference_run):
    """A run with --no-coreg has no ROI tables; the group level still gathers the QC of every scan."""
    import pandas as pd

    assert main([str(demo1["bids"]), str(reference_run), "group"]) == 0
    qc = pd.read_csv(reference_run / "group" / "qc.tsv", sep="\t")
    assert list(qc["subject"].astype(str).str.zfill(2)) == ["01"] and qc.loc[0, "status"] == "pass"
    assert "mask_fraction_fov" in qc.columns
    assert "Quality control" in (reference_run / "group" / "group.html").read_text()


# --- coverage and the tissue mask, on the phantom's echo average ---------------------------------
def test_coverage_rule_and_tissue_mask(small_gre, small_phantom):
    from qsmprep.qsm.masking import assess_coverage, brain_mask

    avg = np.sqrt((np.abs(small_gre[0]) ** 2).sum(-1))
    labels = small_phantom.labels
    whole = assess_coverage(avg)
    assert not whole["partial_coverage"] and whole["background_fraction"] > 0.3
    box = (slice(22, 50), slice(16, 54), slice(8, 36))
    slab = assess_coverage(avg[box])
    assert slab["partial_coverage"] and "background" in slab["reason"] and "faces" in slab["reason"]
    # 'none' keeps the head and drops the air around it
    _, filled, info = brain_mask(avg, (3, 3, 3), method="none")
    air = labels == 0
    assert filled[air].mean() < 0.05 and filled[small_phantom.brain_mask].mean() > 0.99
    assert info["method_used"] == "none" and "fallback" not in info
    # Otsu on a slab would split tissue: the fallback keeps it, and says so
    _, filled, info = brain_mask(avg[box], (3, 3, 3), method="threshold")
    assert info["method_used"] == "none" and "partial coverage" in info["fallback"] and filled.mean() > 0.95
    _, filled, info = brain_mask(avg[box], (3, 3, 3), method="threshold", partial_coverage="ignore")
    assert info["method_used"] == "threshold" and filled.mean() < 0.9
    # a user mask replaces the computed one (and must fit the grid)
    user = small_phantom.brain_mask
    _, filled, info = brain_mask(avg, (3, 3, 3), user_mask=user)
    assert np.array_equal(filled, user) and info["method_used"] == "user"
    with pytest.raises(ValueError, match="shape"):
        brain_mask(avg, (3, 3, 3), user_mask=user[1:])


# --- QC rules catch what went wrong before ---------------------------------------------------------
def test_qc_flags_a_flat_chi_map_and_a_misregistration(small_gre, small_phantom):
    from qsmprep.qsm import qc

    # the first case: scaled floats read as radians gave χ ≈ 0 everywhere, rc 0
    chi_true = small_phantom.chi * small_phantom.brain_mask
    for scale, status in ((1.0, "pass"), (0.002, "warn"), (60.0, "warn")):
        p01, p99 = qc.chi_percentiles(chi_true * scale, small_phantom.brain_mask)
        assert qc.metric("chi_range_ppm", p99 - p01)["Status"] == status, (scale, p99 - p01)
    avg = np.sqrt((np.abs(small_gre[0]) ** 2).sum(-1))
    head = avg > 0.1 * np.percentile(avg, 99)
    nmi, better = qc.registration_similarity(avg, avg, head, (3, 3, 3))
    assert better is None and nmi > 1.5
    nmi_off, better = qc.registration_similarity(avg, np.roll(avg, 2, axis=1), head, (3, 3, 3))
    assert better == "-3 mm along axis j" and nmi_off < nmi
    assert qc.metric("registration_similarity", nmi_off, better_shift=better)["Status"] == "warn"
    # a discrepancy search that fell back to the fixed λ warns; a rule that worked passes; no λ: n/a
    assert qc.metric("lambda_rule", "discrepancy", fallback="the residual stays ...")["Status"] == "warn"
    assert qc.metric("lambda_rule", "discrepancy")["Status"] == "pass"
    assert qc.metric("lambda_rule", None, why="no regularisation weight")["Status"] == "n/a"
    # summarise: the worst status wins and every warning is listed with its metric
    report = qc.summarise({"a": qc.metric("mask_fraction_fov", 0.5), "b": qc.metric("mask_fraction_fov", 0.02),
                           "c": qc.metric("phase_jump_fraction", 0.2)})
    assert report["Status"] == "fail" and [w.split(":")[0] for w in report["Warnings"]] == ["b", "c"]

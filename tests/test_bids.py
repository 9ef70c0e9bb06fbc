"""BIDS input collection and the InputErrors for bad data."""

import json

import nibabel as nib
import numpy as np
import pytest

from bidsutils import gre_file, make_tiny_bids, write_image
from qsmprep.bids import build_prefix, collect_gre, derivative_path
from qsmprep.errors import InputError


def _edit_json(path, **changes):
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def test_collects_multi_echo_record(tmp_path):
    root = make_tiny_bids(tmp_path / "bids", subjects=("01", "02"), n_echoes=3)
    recs = collect_gre(root, participant_label=["sub-02"])
    assert len(recs) == 1
    rec = recs[0]
    assert rec.subject == "02" and rec.n_echoes == 3
    assert rec.echo_times == pytest.approx([0.005, 0.010, 0.015])
    assert rec.b0 == 3.0 and rec.shape == (12, 12, 10) and rec.voxel_size == (2.0, 2.0, 2.0)
    assert [p.split("echo-")[1][0] for p in rec.magnitude] == ["1", "2", "3"]
    assert all("part-phase" in p for p in rec.phase)
    assert rec.t1w.endswith("sub-02_T1w.nii.gz")
    assert rec.prefix == "sub-02"


def test_real_imag_and_single_echo(tmp_path):
    root = make_tiny_bids(tmp_path / "bids", n_echoes=2, parts=("real", "imag"))
    rec = collect_gre(root)[0]
    assert rec.is_complex and len(rec.real) == 2 and len(rec.imag) == 2 and not rec.phase

    root = make_tiny_bids(tmp_path / "single", n_echoes=1)
    for part in ("mag", "phase"):
        for ext in (".nii.gz", ".json"):
            src = gre_file(root, part=part, ext=ext)
            src.rename(src.parent / f"sub-01_part-{part}_T2starw{ext}")
    rec = collect_gre(root)[0]
    assert rec.suffix == "T2starw" and rec.n_echoes == 1


def test_naming():
    assert build_prefix({"subject": "01", "session": "2", "acquisition": "qsm", "run": "1"}) == (
        "sub-01_ses-2_acq-qsm_run-1"
    )
    path = derivative_path("/out", {"subject": "01", "session": "2"}, "fieldmap", desc="localfield")
    assert path.as_posix() == "/out/sub-01/ses-2/anat/sub-01_ses-2_desc-localfield_fieldmap.nii.gz"


def _expect(root, match, name=None, **kwargs):
    with pytest.raises(InputError, match=match) as info:
        collect_gre(root, **kwargs)
    if name is not None:
        assert name in str(info.value), str(info.value)
    return str(info.value)


def test_error_unknown_participant(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    _expect(root, r"participant\(s\) \['07'\] not found", participant_label=["07"])


def test_error_no_gre_for_participant(tmp_path):
    root = make_tiny_bids(tmp_path / "bids", subjects=("01", "02"))
    for f in (root / "sub-02" / "anat").glob("*MEGRE*"):
        f.unlink()
    _expect(root, "no GRE data found for participant 02", "sub-02", participant_label=["02"])


def test_error_not_bids(tmp_path):
    (tmp_path / "x").mkdir()
    _expect(tmp_path / "x", "dataset_description.json is missing")


def test_error_phase_without_magnitude(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    for f in (root / "sub-01" / "anat").glob("*part-mag*"):
        f.unlink()
    _expect(root, "phase without magnitude", "part-phase")


def test_error_magnitude_without_phase(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    for f in (root / "sub-01" / "anat").glob("*part-phase*"):
        f.unlink()
    _expect(root, "magnitude without phase", "part-mag")


def test_error_echo_count_mismatch(tmp_path):
    root = make_tiny_bids(tmp_path / "bids", n_echoes=3)
    gre_file(root, echo=3, part="phase").unlink()
    gre_file(root, echo=3, part="phase", ext=".json").unlink()
    _expect(root, "echo count mismatch between parts: 3 part-mag files, 2 part-phase files", "sub-01")


def test_error_missing_echo_time(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    _edit_json(gre_file(root, echo=2, ext=".json"), EchoTime=None)
    _expect(root, "EchoTime is missing", "sub-01_echo-2_part-mag_MEGRE.nii.gz")


def test_error_duplicate_echo_time(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    for part in ("mag", "phase"):
        _edit_json(gre_file(root, echo=3, part=part, ext=".json"), EchoTime=0.010)
    _expect(root, r"duplicate EchoTime 0.01 s", "echo-3")


def test_error_echo_time_in_ms(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    for e, te in ((1, 5.0), (2, 10.0), (3, 15.0)):
        for part in ("mag", "phase"):
            _edit_json(gre_file(root, echo=e, part=part, ext=".json"), EchoTime=te)
    _expect(root, "looks like milliseconds", "echo-1")


def test_error_shape_mismatch(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    write_image(gre_file(root, echo=2, part="phase"), np.zeros((12, 12, 9), np.uint16))
    _expect(root, r"shape \(12, 12, 9\) differs", "sub-01_echo-2_part-phase")


def test_error_affine_mismatch(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    path = gre_file(root, echo=3, part="mag")
    img = nib.load(path)
    write_image(path, np.asarray(img.dataobj), affine=np.diag([2.0, 2.0, 2.5, 1.0]))
    _expect(root, "affine differs", "sub-01_echo-3_part-mag")


def test_error_4d_file(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    write_image(gre_file(root, echo=1, part="mag"), np.zeros((12, 12, 10, 3), np.uint16))
    _expect(root, "expected a 3D image", "echo-1_part-mag")


def test_missing_field_strength_and_b0_override(tmp_path):
    root = make_tiny_bids(tmp_path / "bids", b0=None)
    _expect(root, "MagneticFieldStrength is missing.*--b0", "sub-01_echo-1_part-mag")
    rec = collect_gre(root, b0=7.0)[0]
    assert rec.b0 == 7.0 and rec.b0_source == "--b0"


def test_error_inconsistent_field_strength(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    _edit_json(gre_file(root, echo=2, ext=".json"), MagneticFieldStrength=7.0)
    _expect(root, "MagneticFieldStrength differs between echoes")


def test_error_echo_time_differs_between_parts(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    _edit_json(gre_file(root, echo=2, part="phase", ext=".json"), EchoTime=0.011)
    _expect(root, "EchoTime 0.011 differs", "echo-2_part-phase")


def test_collect_does_not_write(tmp_path):
    root = make_tiny_bids(tmp_path / "bids")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    collect_gre(root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before

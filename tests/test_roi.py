"""ROI statistics against hand-computed values, label handling and look-up tables."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmprep.analysis.roi import (
    ROISTATS_COLUMNS, SEED_ROIS, canonical_roi, erode_labels, lateralize, parse_hemisphere, read_lut,
    read_roistats, roi_statistics, write_roistats,
)


def _rows_by(rows, label, key="chi"):
    return next(r for r in rows if r["label"] == label and r["map"] == key)


def test_statistics_match_hand_computed_values():
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[0, :, :2] = 5  # 8 voxels
    labels[3, 3, 3] = 9   # 1 voxel, outside the mask
    chi = np.zeros((4, 4, 4), dtype=np.float32)
    vals = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], dtype=np.float32)
    chi[0, :, :2] = vals.reshape(4, 2)
    mask = np.ones((4, 4, 4), dtype=bool)
    mask[0, 3, 1] = False  # excludes the value 0.8
    mask[3, 3, 3] = False
    rows = roi_statistics({"chi": chi}, labels, voxel_size=(1.0, 2.0, 0.5), mask=mask,
                          lut={5: ("Left-Putamen", "L")}, units={"chi": "ppm"})
    r = _rows_by(rows, 5)
    used = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert r["n_voxels"] == 7 and r["n_excluded"] == 1
    assert r["volume_mm3"] == pytest.approx(7 * 1.0)
    assert r["mean"] == pytest.approx(0.4, abs=1e-7)
    assert r["median"] == pytest.approx(0.4, abs=1e-7)
    assert r["std"] == pytest.approx(np.sqrt(((used - 0.4) ** 2).sum() / 6), abs=1e-7)
    # linear-interpolation percentiles of 7 equally spaced values: p25 = 0.25, p75 = 0.55
    assert r["iqr"] == pytest.approx(0.3, abs=1e-7)
    assert r["p5"] == pytest.approx(0.1 + 0.3 * 0.1, abs=1e-7)
    assert r["p95"] == pytest.approx(0.7 - 0.3 * 0.1, abs=1e-7)
    assert r["mass"] == pytest.approx(0.4 * 7.0, abs=1e-6)
    assert (r["name"], r["hemisphere"], r["roi"], r["units"]) == ("Left-Putamen", "L", "putamen", "ppm")
    lone = _rows_by(rows, 9)
    assert lone["n_voxels"] == 0 and lone["n_excluded"] == 1 and np.isnan(lone["mean"])
    assert lone["name"] == "label 9"


def test_two_maps_and_nonfinite_values_are_excluded():
    labels = np.ones((3, 3, 3), dtype=np.int32)
    chi = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    r2 = np.full((3, 3, 3), 20.0, dtype=np.float32)
    r2[0, 0, 0] = np.nan
    rows = roi_statistics({"chi": chi, "r2star": r2}, labels, voxel_size=(1, 1, 1))
    assert [r["map"] for r in rows] == ["chi", "r2star"]
    assert all(r["n_voxels"] == 26 and r["n_excluded"] == 1 for r in rows)
    assert _rows_by(rows, 1)["mean"] == pytest.approx(np.arange(1, 27).mean())
    assert _rows_by(rows, 1, "r2star")["std"] == 0.0


def test_erosion_removes_one_voxel_layer_and_keeps_tiny_labels():
    labels = np.zeros((9, 9, 9), dtype=np.int16)
    labels[2:7, 2:7, 2:7] = 3          # 5³ cube -> 3³ after one erosion
    labels[0, 0, 0] = 4                # a single voxel vanishes under erosion
    eroded = erode_labels(labels, 1)
    assert (eroded == 3).sum() == 27 and (eroded[3:6, 3:6, 3:6] == 3).all()
    assert (erode_labels(labels, 2) == 3).sum() == 1
    chi = np.where(labels == 3, 0.1, 0.0).astype(np.float32)
    chi[2, 2:7, 2:7] = 0.5             # a contaminated boundary face
    rows = roi_statistics({"chi": chi}, labels, voxel_size=(1, 1, 1), erode_voxels=1)
    cube, single = _rows_by(rows, 3), _rows_by(rows, 4)
    assert cube["n_voxels"] == 27 and cube["mean"] == pytest.approx(0.1) and cube["eroded"] == 1
    assert single["n_voxels"] == 1 and single["eroded"] == 0
    with pytest.raises(ValueError, match="erode_voxels"):
        roi_statistics({"chi": chi}, labels, voxel_size=(1, 1, 1), erode_voxels=-1)


def test_touching_labels_erode_at_their_common_border():
    labels = np.zeros((8, 5, 5), dtype=np.int16)
    labels[1:4, 1:4, 1:4] = 1
    labels[4:7, 1:4, 1:4] = 2
    eroded = erode_labels(labels, 1)
    assert (eroded == 1).sum() == 1 and (eroded == 2).sum() == 1


@pytest.mark.parametrize("option, value", [("voxel_size", (1, 1)), ("voxel_size", (1, 0, 1))])
def test_bad_options_are_named(option, value):
    labels = np.ones((2, 2, 2), dtype=np.int16)
    with pytest.raises(ValueError, match=option):
        roi_statistics({"chi": np.zeros((2, 2, 2))}, labels, **{option: value})


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        roi_statistics({"chi": np.zeros((2, 2, 3))}, np.ones((2, 2, 2), dtype=int), voxel_size=(1, 1, 1))


@pytest.mark.parametrize("name, base, hemi", [
    ("Left-Putamen", "Putamen", "L"), ("ctx-rh-precuneus", "ctx precuneus", "R"),
    ("Right Cuneal Cortex", "Cuneal Cortex", "R"), ("left-red-nucleus", "red nucleus", "L"),
    ("globus pallidus R", "globus pallidus", "R"), ("caudate_L", "caudate", "L"),
    ("Brain-Stem", "Brain Stem", ""), ("lh.dentate", "dentate", "L"), ("Right-Cerebellum-Cortex",
                                                                        "Cerebellum Cortex", "R"),
])
def test_hemisphere_parsing(name, base, hemi):
    assert parse_hemisphere(name) == (base, hemi)


def test_every_seed_roi_is_expressible():
    names = {
        "globus pallidus": ["Left-Pallidum", "left-globus-pallidus-interna", "globus pallidus"],
        "putamen": ["Right-Putamen", "Left Putamen"],
        "caudate": ["Left-Caudate", "Right Caudate", "left-caudate"],
        "hippocampus": ["Left-Hippocampus", "Right Hippocampus"],
        "thalamus": ["Left-Thalamus-Proper", "Left-Thalamus", "right-thalamus"],
        "red nucleus": ["left-red-nucleus", "red nucleus R"],
        "substantia nigra": ["right-substantia-nigra", "substantia nigra L", "SNc_L"],
        "dentate": ["Left_Dentate", "dentate nucleus R", "lh-cerebellar-dentate-nucleus"],
        "cuneus": ["ctx-lh-cuneus", "Left Cuneal Cortex"],
        "precuneus": ["ctx-rh-precuneus", "Right Precuneous Cortex"],
        "precentral gyrus": ["ctx-lh-precentral", "Left Precentral Gyrus"],
        "superior frontal gyrus": ["ctx-rh-superiorfrontal", "Right Superior Frontal Gyrus"],
    }
    assert set(names) == set(SEED_ROIS)
    for seed, examples in names.items():
        for example in examples:
            assert canonical_roi(example) == seed, example
    for other in ("left-dentate-gyrus", "Left-Cerebral-White-Matter", "ctx-lh-postcentral", "Brainstem",
                  "Left Middle Frontal Gyrus", "left-CA1"):
        assert canonical_roi(other) == "", other


def test_read_lut_formats(tmp_path):
    tsv = tmp_path / "dseg.tsv"
    tsv.write_text("index\tname\tabbreviation\n0\tBackground\tbg\n11\tLeft Caudate\tlc\n12\tvein\tv\n")
    assert read_lut(tsv) == {0: ("Background", ""), 11: ("Left Caudate", "L"), 12: ("vein", "")}
    with_hemi = tmp_path / "h_dseg.tsv"
    with_hemi.write_text("index\tname\themisphere\n3\tcaudate\tright\n4\tvein\tn/a\n")
    assert read_lut(with_hemi) == {3: ("caudate", "R"), 4: ("vein", "")}
    fs = tmp_path / "FreeSurferColorLUT.txt"
    fs.write_text("#$Id$\n#No. Label Name: R G B A\n\n0  Unknown  0 0 0 0\n17 Left-Hippocampus 220 216 20 0\n"
                  "2025 ctx-rh-precuneus 160 140 180 0\n")
    assert read_lut(fs) == {0: ("Unknown", ""), 17: ("Left-Hippocampus", "L"), 2025: ("ctx-rh-precuneus", "R")}
    js = tmp_path / "lut.json"
    js.write_text(json.dumps({"1": "Right-Putamen", "2": {"name": "nigra", "hemisphere": "L"}}))
    assert read_lut(js) == {1: ("Right-Putamen", "R"), 2: ("nigra", "L")}
    bad = tmp_path / "bad.txt"
    bad.write_text("hello world\n")
    with pytest.raises(ValueError, match="look-up table"):
        read_lut(bad)


def test_bundled_freesurfer_table_covers_cortical_seeds():
    from qsmprep.workflows.roi import FREESURFER_LUT

    lut = read_lut(FREESURFER_LUT)
    seeds = {(canonical_roi(n), h) for n, h in lut.values()}
    for seed in ("globus pallidus", "putamen", "caudate", "hippocampus", "thalamus", "cuneus", "precuneus",
                 "precentral gyrus", "superior frontal gyrus"):
        assert (seed, "L") in seeds and (seed, "R") in seeds


def test_tsv_round_trip(tmp_path):
    labels = np.zeros((3, 3, 3), dtype=np.int16)
    labels[1, 1, 1] = 2
    labels[0, 0, 0] = 7
    mask = labels == 2
    rows = roi_statistics({"chi": np.full((3, 3, 3), 0.25)}, labels, voxel_size=(2, 2, 2), mask=mask,
                          lut={2: ("Right-Pallidum", "R")}, units={"chi": "ppm"})
    path = write_roistats(rows, tmp_path / "roistats.tsv")
    header = path.read_text().splitlines()[0].split("\t")
    assert tuple(header) == ROISTATS_COLUMNS
    back = read_roistats(path)
    assert back[0]["label"] == 2 and back[0]["mean"] == pytest.approx(0.25) and back[0]["volume_mm3"] == 8.0
    assert back[0]["roi"] == "globus pallidus" and back[0]["mass"] == pytest.approx(2.0)
    assert back[1]["n_voxels"] == 0 and np.isnan(back[1]["median"])
    assert "n/a" in path.read_text().splitlines()[2]


def test_lateralize_splits_at_the_midline():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 3] = -5.0  # x = 2i - 5: i = 0, 1, 2 left (x < 0); i = 3, 4 right
    labels = np.zeros((5, 2, 2), dtype=np.int16)
    labels[:, 0, 0] = 3
    labels[:, 1, 1] = 4
    out, lut = lateralize(labels, affine, {3: ("Cuneal Cortex", ""), 4: ("Left Thing", "L")})
    assert (out[:3, 0, 0] == 3).all() and (out[3:, 0, 0] == 1003).all()
    assert (out[:, 1, 1] == 4).all()
    assert lut[3] == ("Cuneal Cortex", "L") and lut[1003] == ("Cuneal Cortex", "R") and lut[4] == ("Left Thing", "L")
    with pytest.raises(ValueError, match="offset"):
        lateralize(labels, affine, {}, offset=2)


def test_phantom_truth_labels_give_the_lut_chi(small_phantom):
    """Eroded deep-grey ROIs of the true χ reproduce the phantom's per-label χ."""
    from qsmprep.demo import DEEP_GREY_LABELS

    ph = small_phantom
    rows = roi_statistics({"chi": ph.chi, "r2star": ph.r2star}, ph.labels, voxel_size=ph.voxel_size,
                          lut={k: v[:2] for k, v in ph.lut.items()}, mask=ph.brain_mask, erode_voxels=1,
                          include=DEEP_GREY_LABELS)
    assert sum(_rows_by(rows, lab)["eroded"] for lab in DEEP_GREY_LABELS) >= 6
    for lab in DEEP_GREY_LABELS:
        r = _rows_by(rows, lab)
        assert r["n_voxels"] > 0
        assert r["hemisphere"] == ph.lut[lab][1]
        assert r["roi"] == ph.lut[lab][0]
        if r["eroded"]:  # eroded interiors are pure tissue
            assert abs(r["median"] - ph.lut[lab][2]) < 1e-4, (lab, r["median"], ph.lut[lab][2])
        else:  # labels one or two 3 mm voxels thin are kept whole: partial volume with white matter
            assert r["n_voxels"] < 30 and -0.03 < r["median"] < ph.lut[lab][2] + 1e-4


def test_roistats_interface(tmp_path, small_phantom):
    from qsmprep.interfaces.roi import ROIStats

    ph = small_phantom
    paths = {}
    for name, data in (("chi", ph.chi), ("r2star", ph.r2star), ("mask", ph.brain_mask.astype(np.uint8)),
                       ("labels", ph.labels.astype(np.int16))):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.Nifti1Image(data, ph.affine).to_filename(paths[name])
    lut = tmp_path / "dseg.tsv"
    lut.write_text("index\tname\themisphere\n" + "".join(f"{k}\t{v[0]}\t{v[1] or 'n/a'}\n" for k, v in ph.lut.items()))
    res = ROIStats(labels=paths["labels"], lut=str(lut), chi=paths["chi"], r2star=paths["r2star"], mask=paths["mask"],
                   atlas="truth", meta={"ReferenceRegion": "whole brain"}).run(cwd=str(tmp_path))
    rows = read_roistats(res.outputs.out_tsv)
    putamen = [r for r in rows if r["label"] == 13]
    assert {r["map"] for r in putamen} == {"chi", "r2star"}
    assert putamen[0]["roi"] == "putamen" and putamen[0]["hemisphere"] == "L"
    info = json.loads(open(res.outputs.out_json).read())
    assert info["Atlas"] == "truth" and info["ReferenceRegion"] == "whole brain"
    assert "mass" in info["Columns"]
    # labels outside the brain mask (skull, air) are reported with their voxels excluded
    skull = next(r for r in rows if r["label"] == 2 and r["map"] == "chi")
    assert skull["n_voxels"] == 0 and skull["n_excluded"] > 0


def test_compare_roi_means_with_a_reference_region():
    """Both maps are shifted to zero mean over the reference region (default: the mask)."""
    from qsmprep.analysis.validation import compare_roi_means

    labels = np.array([[[1, 1, 2, 2, 7, 7]]])
    truth = np.array([[[0.1, 0.1, 0.2, 0.2, 0.0, 0.0]]])
    chi = truth + 0.05  # a constant offset: invisible with any common reference
    chi[0, 0, 4:] = 0.03  # ... but the reference region itself is measured wrong
    mask = np.ones(labels.shape, bool)
    whole = compare_roi_means(chi, truth, labels, mask, [1, 2])
    # whole-mask means: truth 0.6/6 = 0.1, chi 0.86/6; error = 0.05 − (0.86 − 0.6)/6 = 0.02/3
    np.testing.assert_allclose(whole["error"], [0.02 / 3, 0.02 / 3], atol=1e-12)
    csf = compare_roi_means(chi, truth, labels, mask, [1, 2], reference=labels == 7)
    np.testing.assert_allclose(csf["measured"], [0.12, 0.22], atol=1e-12)
    np.testing.assert_allclose(csf["error"], [0.02, 0.02], atol=1e-12)
    with pytest.raises(ValueError, match="reference region"):
        compare_roi_means(chi, truth, labels, mask, [1, 2], reference=labels == 9)

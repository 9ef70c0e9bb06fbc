"""Lesion statistics (issue 20): numerics on synthetic geometry with known answers, the lesion
input finder and options.  The demo's lesion table (the default demo processes its lesion
masks) is tested in test_e2e.py, its accuracy on the 1 mm demo in test_pipeline_accuracy.py."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

from qsmprep.analysis.lesions import (
    TISSUE_CODES, classify, label_lesions, lesion_parameters, lesion_statistics, split_params, tissue_from_labels,
)
from qsmprep.errors import InputError

WM, CX, CSF = TISSUE_CODES["wm"], TISSUE_CODES["cortex"], TISSUE_CODES["csf"]
VS = (1.0, 1.0, 1.0)


def _ball(shape, centre, radius):
    ii, jj, kk = np.indices(shape)
    return (ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (kk - centre[2]) ** 2 <= radius ** 2


@pytest.fixture
def slab():
    """A WM block (χ −0.03) under a cortex slab (χ 0.02, k ≥ 30) under CSF (k ≥ 40)."""
    shape = (48, 48, 48)
    tissue = np.full(shape, WM, np.int8)
    tissue[:, :, 30:] = CX
    tissue[:, :, 40:] = CSF
    chi = np.select([tissue == WM, tissue == CX], [-0.03, 0.02], 0.0).astype(np.float32)
    return shape, tissue, chi


def _row(rows, lid, portion="whole"):
    return next(r for r in rows if r["lesion_id"] == lid and r["portion"] == portion)


def test_relative_chi_class_and_portions_are_exact_on_piecewise_constant_maps(slab):
    shape, tissue, chi = slab
    chi = chi.copy()
    wm_les = _ball(shape, (14, 14, 14), 3)
    cx_les = _ball(shape, (34, 34, 35), 3) & (tissue == CX)
    mixed = _ball(shape, (34, 14, 30), 3.5)
    chi[wm_les] = -0.03 + 0.014
    chi[cx_les] = 0.02 - 0.018
    chi[mixed & (tissue == WM)] = -0.03 + 0.014
    chi[mixed & (tissue == CX)] = 0.02 - 0.018
    lesion_map = (wm_les | cx_les | mixed).astype(np.int16)
    lesions, sources, n_small = label_lesions(lesion_map, VS)
    assert lesions.max() == 3 and n_small == 0 and sources == [1, 1, 1]
    rows, params = lesion_statistics(chi, lesions, tissue, VS, np.eye(4))
    by_class = {}
    for r in rows:
        by_class.setdefault(r["class"], []).append(r)
    assert sorted(by_class) == ["cortical", "mixed", "wm"]
    (wm,), (cx,) = by_class["wm"], by_class["cortical"]
    assert wm["chi_relative"] == pytest.approx(0.014, abs=1e-6) and wm["reference_tissue"] == "wm"
    assert cx["chi_relative"] == pytest.approx(-0.018, abs=1e-6) and cx["reference_tissue"] == "cortex"
    portions = {r["portion"]: r for r in by_class["mixed"]}
    assert set(portions) == {"wm", "cortical"}
    assert portions["wm"]["chi_relative"] == pytest.approx(0.014, abs=1e-6)
    assert portions["cortical"]["chi_relative"] == pytest.approx(-0.018, abs=1e-6)
    assert 0.25 <= portions["wm"]["cortex_fraction"] <= 0.75
    # centroids in world mm: the identity affine gives the voxel centre of mass
    assert (wm["centroid_gre_x"], wm["centroid_gre_y"], wm["centroid_gre_z"]) == pytest.approx((14, 14, 14))
    assert params["GapMM"] == 1.0 and params["OuterMM"] == 5.0 and params["RimMM"] == 1.0


def test_reference_shell_gap_outer_distance_and_exclusions(slab):
    shape, tissue, chi = slab
    les = _ball(shape, (14, 14, 14), 3)
    other = _ball(shape, (14, 24, 14), 2)     # 10 voxels away: its surroundings leave the shell
    lesions = les.astype(np.int16) + 2 * other
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(shape), (14, 14, 14))))
    # a marker χ by distance from the lesion tells which voxels made the reference
    chi = np.where(les, 0.1, -0.03).astype(np.float32)
    reference = np.zeros(shape, np.int32)
    rows, _ = lesion_statistics(chi, lesions, tissue, VS, np.eye(4), gap_mm=1.0, outer_mm=5.0,
                                reference_out=reference)
    ref_n = _row(rows, 1)["n_reference"]
    from scipy import ndimage

    d = ndimage.distance_transform_edt(~les)
    near_other = ndimage.distance_transform_edt(~other) <= 1.0
    expected = (d > 1.0) & (d <= 5.0) & ~other & ~near_other
    assert ref_n == int(expected.sum()) and ref_n > 100
    # the reference map (report overlays, desc-lesionreference_dseg) holds exactly those voxels;
    # lesion 2's own reference keeps what lesion 1 did not take
    assert np.array_equal(reference == 1, expected)
    assert 0 < int((reference == 2).sum()) <= _row(rows, 2)["n_reference"]
    assert dist[les].max() <= 3
    # too few reference voxels: reported, without relative values
    rows, _ = lesion_statistics(chi, lesions, tissue, VS, np.eye(4), min_reference_voxels=10 ** 6)
    r = _row(rows, 1)
    assert r["reason"] == "no-reference" and math.isnan(r["chi_relative"]) and r["chi_mean"] == pytest.approx(0.1)


def test_edge_coverage_of_medi_edge_weights(slab):
    """``edge_coverage`` counts the forward differences that cross the lesion's boundary where
    the edge weights are 0 (MEDI's magnitude edges); below ``edge_coverage_min`` the row says
    ``magnitude-edge-prior``; without edge weights it is NaN and no caution."""
    shape, tissue, chi = slab
    les = _ball(shape, (14, 14, 14), 3)
    lesions = les.astype(np.int16)
    cross = np.stack([les ^ np.roll(les, -1, axis=ax) for ax in range(3)])
    edges = np.where(cross, 0.0, 1.0).astype(np.float32)       # every boundary crossing an edge
    rows, params = lesion_statistics(chi, lesions, tissue, VS, np.eye(4), edge_weights=edges)
    assert _row(rows, 1)["edge_coverage"] == pytest.approx(1.0) and _row(rows, 1)["chi_caution"] == ""
    half = edges.copy()
    half[0][cross[0]] = 1.0                                      # the x crossings are not edges
    r = _row(lesion_statistics(chi, lesions, tissue, VS, np.eye(4), edge_weights=half)[0], 1)
    assert r["edge_coverage"] == pytest.approx(1 - cross[0].sum() / cross.sum())
    assert r["chi_caution"] == "magnitude-edge-prior" and params["EdgeCoverageMin"] == 0.8
    r = _row(lesion_statistics(chi, lesions, tissue, VS, np.eye(4))[0], 1)
    assert math.isnan(r["edge_coverage"]) and r["chi_caution"] == ""
    # the weights are MEDI's own edge mask, and only when MEDI made χ
    from qsmprep.analysis.lesions import medi_edge_weights
    from qsmprep.qsm.inversion.medi import edge_mask

    mag = np.where(les, 0.5, 1.0).astype(np.float32)
    brain = np.ones(shape, bool)
    got = medi_edge_weights({"DipoleInversion": "medi", "DipoleInversionParameters": {"edge_fraction": 0.2}},
                            mag, brain, VS)
    assert np.array_equal(got, edge_mask(mag, brain, VS, edge_fraction=0.2))
    assert medi_edge_weights({"DipoleInversion": "rts"}, mag, brain, VS) is None


def test_vessels_leave_the_reference_and_do_not_bias_it(slab):
    shape, tissue, chi = slab
    chi = chi.copy()
    les = _ball(shape, (14, 14, 14), 3)
    chi[les] = -0.016
    vein = np.zeros(shape, bool)
    vein[19:21, :, 13:15] = True               # a 2-voxel vein along j, 2 voxels from the lesion
    chi[vein] = 0.35
    rows, params = lesion_statistics(chi, les.astype(np.int16), tissue, VS, np.eye(4))
    r = _row(rows, 1)
    assert r["n_reference_vessel"] > 0 and r["chi_relative"] == pytest.approx(0.014, abs=1e-6)
    rows, _ = lesion_statistics(chi, les.astype(np.int16), tissue, VS, np.eye(4), vessel_chi_ppm=10.0)
    assert _row(rows, 1)["chi_relative"] < 0.014 - 0.005    # without the rule the vein biases it


def test_rim_is_flagged_on_a_paramagnetic_rim_only(slab):
    shape, tissue, chi = slab
    chi = chi.copy()
    rim_les = _ball(shape, (14, 14, 14), 5)
    chi[rim_les] = -0.025
    chi[rim_les & ~_ball(shape, (14, 14, 14), 4)] = 0.03
    plain = _ball(shape, (14, 34, 14), 5)
    chi[plain] = -0.016
    lesions = rim_les.astype(np.int16) + 2 * plain
    rows, _ = lesion_statistics(chi, lesions, tissue, VS, np.eye(4))
    rim, other = _row(rows, 1), _row(rows, 2)
    assert rim["rim_candidate"] and rim["rim_minus_core"] > 0.04
    assert not other["rim_candidate"] and other["rim_minus_core"] == pytest.approx(0.0, abs=1e-7)
    # a lesion darker than its tissue, with a brighter edge (partial volume with it): not a rim
    chi2 = chi.copy()
    chi2[rim_les] = -0.06
    chi2[rim_les & ~_ball(shape, (14, 14, 14), 4)] = -0.04
    rows, _ = lesion_statistics(chi2, lesions, tissue, VS, np.eye(4))
    assert _row(rows, 1)["rim_minus_core"] > 0.01 and not _row(rows, 1)["rim_candidate"]


def test_components_sizes_labels_and_unclassified_tissue(slab):
    shape, tissue, chi = slab
    lesion_map = np.zeros(shape, np.int16)
    lesion_map[_ball(shape, (10, 10, 10), 3)] = 1
    lesion_map[_ball(shape, (30, 10, 10), 3)] = 2          # another label: its own lesion
    lesion_map[20, 30, 10] = 1                              # one voxel: 1 mm³, diameter 1.24 mm < 2
    lesions, sources, n_small = label_lesions(lesion_map, VS, min_diameter_mm=2.0)
    assert lesions.max() == 2 and sources == [1, 2] and n_small == 1
    # diameter of the volume-equivalent sphere: 4.19 mm³ is the 2 mm threshold
    assert label_lesions(lesion_map, VS, min_diameter_mm=1.0)[0].max() == 3
    t = tissue.copy()
    t[lesions == 1] = 0                                     # the segmentation labels the lesion itself
    rows, _ = lesion_statistics(chi, lesions, t, VS, np.eye(4))
    r = _row(rows, 1)
    assert r["class"] == "wm" and r["n_tissue_filled"] == int((lesions == 1).sum())
    assert classify(0.8, 0.2) == "cortical" and classify(0.5, 0.5) == "mixed"
    assert classify(0.1, 0.9) == "wm" and classify(0.1, 0.2) == "other"
    with pytest.raises(ValueError, match="mixed_min"):
        classify(0.5, 0.5, cortical_min=0.2, mixed_min=0.3)


def test_tissue_classes_from_label_names():
    from qsmprep.analysis.roi import read_lut
    from qsmprep.workflows.roi import FREESURFER_LUT

    lut = read_lut(FREESURFER_LUT)
    names = {name: lab for lab, (name, _) in lut.items()}
    labels = np.array(list(lut), np.int32)
    tissue, rules = tissue_from_labels(labels, lut)
    cls = dict(zip(labels.tolist(), tissue.tolist()))
    expect = {"Left-Cerebral-White-Matter": "wm", "Left-Cerebral-Cortex": "cortex", "ctx-lh-precuneus": "cortex",
              "Left-Lateral-Ventricle": "csf", "Left-Putamen": "deep_gm", "Left-Thalamus": "deep_gm",
              "WM-hypointensities": "wm", "CSF": "csf"}
    for name, want in expect.items():
        if name in names:
            assert cls[names[name]] == TISSUE_CODES[want], name
    demo = {5: ("grey matter", ""), 6: ("white matter", ""), 4: ("CSF", ""), 30: ("vein", ""),
            32: ("haemorrhage", ""), 13: ("putamen", "L")}
    t, rules = tissue_from_labels(np.array([5, 6, 4, 30, 32, 13]), demo)
    assert t.tolist() == [CX, WM, CSF, TISSUE_CODES["vessel"], 0, TISSUE_CODES["deep_gm"]]
    assert rules["haemorrhage"] == "unclassified"


def test_options_come_from_the_signatures_and_are_checked():
    from qsmprep.cli.run import parse_lesion_options

    known = lesion_parameters()
    assert known["outer_mm"] == 5.0 and known["min_diameter_mm"] == 2.0 and known["gap_mm"] is None
    assert split_params({"min_diameter_mm": 3, "outer_mm": 4}) == ({"min_diameter_mm": 3}, {"outer_mm": 4})
    with pytest.raises(ValueError, match="unknown lesion option"):
        split_params({"outer": 4})
    assert parse_lesion_options(["outer_mm=4", "min-reference-voxels=20"]) == {"outer_mm": 4.0,
                                                                              "min_reference_voxels": 20}
    from qsmprep.analysis.lesions import check_options

    with pytest.raises(ValueError, match=r"default: one voxel, 5 mm here"):   # 5 mm slices, outer 5 mm
        check_options({}, voxel_size=(1.0, 1.0, 5.0))
    assert check_options({"outer_mm": 8}, voxel_size=(1.0, 1.0, 5.0)) == (5.0, 5.0)
    for bad, msg in (("outer=4", "KEY=VALUE"), ("outer_mm=x", "number"), ("gap_mm=6", "smaller than outer_mm"),
                     ("min_reference_voxels=2.5", "integer"), ("mixed_min=0.9", "mixed_min <= cortical_min")):
        with pytest.raises(InputError, match=msg):
            parse_lesion_options([bad])


def test_find_lesion_masks(tmp_path):
    from qsmprep.workflows.lesions import find_lesion_masks

    anat = tmp_path / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    img.to_filename(anat / "sub-01_ses-1_desc-lesion_dseg.nii.gz")
    (tmp_path / "desc-lesion_dseg.tsv").write_text("index\tname\n1\tMS lesion\n")
    found = find_lesion_masks(tmp_path, "01", "1")
    assert found["space"] == "T1w" and found["lut"].endswith("desc-lesion_dseg.tsv")
    (tmp_path / "desc-lesion_dseg.tsv").rename(tmp_path / "dseg.tsv")     # the dataset-level name
    assert find_lesion_masks(tmp_path, "01", "1")["lut"] == str(tmp_path / "dseg.tsv")
    (tmp_path / "dseg.tsv").rename(tmp_path / "desc-lesion_dseg.tsv")
    assert find_lesion_masks(tmp_path, "01", "2") is None and find_lesion_masks(tmp_path, "02") is None
    img.to_filename(anat / "sub-01_ses-1_space-FLAIR_label-lesion_mask.nii.gz")
    with pytest.raises(InputError, match="several lesion masks"):
        find_lesion_masks(tmp_path, "01", "1")
    (anat / "sub-01_ses-1_desc-lesion_dseg.nii.gz").unlink()
    found = find_lesion_masks(tmp_path, "01", "1")
    assert found["space"] == "FLAIR" and found["lut"] is None
    (anat / "sub-01_ses-1_space-FLAIR_label-lesion_mask.nii.gz").rename(anat / "sub-01_ses-1_space-MNI_label-lesion_mask.nii.gz")
    with pytest.raises(InputError, match="space-MNI"):
        find_lesion_masks(tmp_path, "01", "1")


def test_atropos_tissue_without_a_segmentation(tmp_path):
    """Without --segmentation-dir the tissue classes come from Atropos on the T1w: on the demo's
    T1w (2 mm) most WM, GM and CSF voxels get their class."""
    from qsmprep.anat.segmentation import atropos_tissue
    from qsmprep.demo import BRAIN_LABELS, render_t1w, t1w_labels

    t1w = render_t1w("small", seed=0)
    truth = t1w_labels("small", 0, t1w.affine, t1w.shape)
    brain = np.isin(truth, BRAIN_LABELS)
    t1w.to_filename(tmp_path / "t1w.nii.gz")
    nib.Nifti1Image(brain.astype(np.uint8), t1w.affine).to_filename(tmp_path / "mask.nii.gz")
    out, info = atropos_tissue(tmp_path / "t1w.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "tissue.nii.gz")
    tissue = np.asarray(nib.load(out).dataobj)
    assert info["TissueSource"] == "atropos" and "deep grey" in info["TissueMethod"]
    for labs, code in (((6,), WM), ((5,), CX), ((4, 7, 8), CSF)):
        sel = np.isin(truth, labs)
        assert np.mean(tissue[sel] == code) > 0.8, (labs, np.bincount(tissue[sel]))
    assert not tissue[~brain].any()


def _table(rows):
    import pandas as pd

    cols = ["participant_id", "scan", "lesion_id", "input_name", "class", "portion", "portion_volume_mm3",
            "chi_relative"]
    return pd.DataFrame(rows, columns=cols)


def test_group_t_tests_and_bonferroni_against_hand_computed_values():
    from scipy import stats as sst

    from qsmprep.analysis.lesion_group import lesion_group_stats, lesion_observations

    wm = {"sub-1": [0.01, 0.03, 0.02], "sub-2": [0.0, 0.015], "sub-3": [0.025]}
    rows = []
    for sub, vals in wm.items():
        for i, v in enumerate(vals, 1):
            rows.append([sub, sub, i, "MS lesion", "wm", "whole", 100.0, v])
    rows.append(["sub-1", "sub-1", 9, "MS lesion", "cortical", "whole", 50.0, -0.02])
    rows.append(["sub-2", "sub-2", 9, "MS lesion", "cortical", "whole", 50.0, -0.01])
    rows.append(["sub-3", "sub-3", 9, "MS lesion", "cortical", "whole", 50.0, -0.03])
    # a mixed lesion: portions of 30 and 10 mm³ → (30·0.02 + 10·(−0.04)) / 40 = 0.005
    rows.append(["sub-1", "sub-1", 7, "MS lesion", "mixed", "wm", 30.0, 0.02])
    rows.append(["sub-1", "sub-1", 7, "MS lesion", "mixed", "cortical", 10.0, -0.04])
    rows.append(["sub-2", "sub-2", 7, "MS lesion", "mixed", "wm", 10.0, 0.01])
    rows.append(["sub-2", "sub-2", 7, "MS lesion", "mixed", "cortical", 10.0, 0.03])
    rows.append(["sub-3", "sub-3", 5, "MS lesion", "wm", "whole", 100.0, float("nan")])   # no reference
    rows.append(["sub-1", "sub-1", 20, "haemorrhage", "wm", "whole", 100.0, 0.3])
    rows.append(["sub-2", "sub-2", 20, "haemorrhage", "wm", "whole", 100.0, 0.4])
    table = _table(rows)
    # the first WM lesion has a caution; the rest n/a, which a TSV reader gives as NaN
    table["chi_caution"] = ["magnitude-edge-prior"] + [np.nan] * (len(table) - 1)
    obs = lesion_observations(table)
    mixed = obs[obs["class"] == "mixed"].set_index("participant_id")["chi_relative"]
    assert mixed["sub-1"] == pytest.approx(0.005) and mixed["sub-2"] == pytest.approx(0.02)
    out = lesion_group_stats(table).set_index(["input_name", "class", "level"])

    def by_hand(values):
        v = np.asarray(values, float)
        n, mean, sd = v.size, v.sum() / v.size, math.sqrt(((v - v.mean()) ** 2).sum() / (v.size - 1))
        t = mean / (sd / math.sqrt(n))
        return n, mean, sd, t, 2 * sst.t.sf(abs(t), n - 1)

    all_wm = [v for vals in wm.values() for v in vals]
    per_sub = [np.mean(v) for v in wm.values()]
    for level, values in (("lesion", all_wm), ("participant", per_sub)):
        n, mean, sd, t, p = by_hand(values)
        row = out.loc[("MS lesion", "wm", level)]
        assert (row["n"], row["mean"], row["sd"], row["t"], row["p"]) == pytest.approx((n, mean, sd, t, p))
        assert row["m_tests"] == 6 and row["p_bonferroni"] == pytest.approx(min(1.0, 6 * p))
    n, mean, sd, t, p = by_hand([-0.02, -0.01, -0.03])
    assert out.loc[("MS lesion", "cortical", "participant"), "t"] == pytest.approx(t)
    hae = out.loc[("haemorrhage", "wm", "lesion")]
    assert hae["n"] == 2 and hae["m_tests"] == 2     # its own family: 1 type x 2 levels
    # the lesions whose row carries a chi_caution are counted with their type
    assert out.loc[("MS lesion", "wm", "lesion"), "n_caution"] == 1 and hae["n_caution"] == 0


def test_site_calibration_scales_the_lesion_statistics():
    """A per-site factor multiplies every χ column of the lesion tables, so relative χ and its
    group mean scale with it, while its t statistic (scale-free) does not change."""
    from qsmprep.analysis.calibration import CALIBRATED_LESION_COLUMNS, calibrate_table, scan_factors
    from qsmprep.analysis.lesion_group import lesion_group_stats
    from qsmprep.errors import InputError

    table = _table([["sub-1", "sub-1", i, "MS lesion", "wm", "whole", 100.0, v] for i, v in enumerate((0.01, 0.03, 0.02), 1)]
                   + [["sub-2", "sub-2", i, "MS lesion", "wm", "whole", 100.0, v] for i, v in enumerate((0.0, 0.015), 1)])
    table["chi_mean"] = table["chi_relative"] + 0.05
    table["rim_candidate"] = False
    factors = scan_factors({"sub-1": "siteA", "sub-2": "siteB"}, {"siteA": 1.0, "siteB": 1.2})
    cal = calibrate_table(table, factors, CALIBRATED_LESION_COLUMNS)
    f = table["scan"].map({"sub-1": 1.0, "sub-2": 1.2})
    assert np.allclose(cal["chi_relative"], table["chi_relative"] * f)
    assert np.allclose(cal["chi_mean"], table["chi_mean"] * f) and np.allclose(cal["calibration_factor"], f)
    assert (cal["rim_candidate"] == table["rim_candidate"]).all()
    one = {"sub-1": 1.3, "sub-2": 1.3}
    s0 = lesion_group_stats(table).set_index("level")
    s1 = lesion_group_stats(calibrate_table(table, one, CALIBRATED_LESION_COLUMNS)).set_index("level")
    assert s1.loc["lesion", "mean"] == pytest.approx(1.3 * s0.loc["lesion", "mean"])
    assert s1.loc["lesion", "t"] == pytest.approx(s0.loc["lesion", "t"])
    with pytest.raises(InputError, match="siteB"):
        scan_factors({"sub-1": "siteA", "sub-2": "siteB"}, {"siteA": 1.0})


def test_linear_fit_and_tube_table(tmp_path):
    from scipy import stats as sst

    from qsmprep.analysis.calibration import calibration_factor, linear_fit, read_tubes

    x = np.array([0.0, 1, 2, 3, 4, 5])
    y = 0.3 * x + 0.02 + np.array([0.01, -0.02, 0.015, 0.0, -0.01, 0.005])
    fit = linear_fit(x, y)
    ref = sst.linregress(x, y)
    assert fit["slope"] == pytest.approx(ref.slope) and fit["intercept"] == pytest.approx(ref.intercept)
    assert fit["r2"] == pytest.approx(ref.rvalue ** 2)
    q = sst.t.ppf(0.975, len(x) - 2)
    assert fit["slope_ci"] == pytest.approx([ref.slope - q * ref.stderr, ref.slope + q * ref.stderr])
    assert fit["intercept_ci"] == pytest.approx([ref.intercept - q * ref.intercept_stderr,
                                                 ref.intercept + q * ref.intercept_stderr])
    assert calibration_factor(0.3, 0.33) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="two distinct"):
        linear_fit([1.0, 1.0], [0.1, 0.2])
    nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)).to_filename(tmp_path / "labels.nii.gz")
    (tmp_path / "t.tsv").write_text("tube\tconcentration\tlabel\nA\t0\t1\nB\t2.5\t2\n")
    with pytest.raises(InputError, match="no label_map"):
        read_tubes(tmp_path / "t.tsv")
    tubes = read_tubes(tmp_path / "t.tsv", label_map="labels.nii.gz")
    assert [t["concentration"] for t in tubes] == [0.0, 2.5] and tubes[0]["units"] == "mM"
    (tmp_path / "one.tsv").write_text("tube\tconcentration\tlabel\nA\t2\t1\nB\t2\t2\n")
    with pytest.raises(InputError, match="two different concentrations"):
        read_tubes(tmp_path / "one.tsv", label_map="labels.nii.gz")
    (tmp_path / "bad.tsv").write_text("tube\tconcentration\tlabel\tlabel_map\nA\tlots\t1\tlabels.nii.gz\n")
    with pytest.raises(InputError, match="not a number"):
        read_tubes(tmp_path / "bad.tsv")


def test_calibrate_recovers_the_molar_susceptibility_of_the_tube_phantom(tmp_path):
    """``qsmprep calibrate`` on the demo's tube phantom (six tubes, 0-5 mM gadolinium, 0.326
    ppm/mM, in a water cylinder in air): slope within 5 % of the truth, R² > 0.98, the
    calibration factor ≈ 1, and the run's record."""
    import csv

    from qsmprep.cli.run import main
    from qsmprep.demo.tubes import write_tube_dataset

    info = write_tube_dataset(tmp_path / "tubes")
    out = tmp_path / "out"
    rc = main(["calibrate", info["bids_dir"], str(out), "--tubes", info["tubes"], "--reference-slope", "0.326",
               "--nprocs", "2", "-w", str(tmp_path / "work")])
    assert rc == 0
    (fit,) = list(csv.DictReader((out / "calibration" / "calibration_fit.tsv").open(), delimiter="\t"))
    assert float(fit["slope"]) == pytest.approx(info["molar_chi"], rel=0.05), fit
    assert float(fit["r2"]) > 0.98 and float(fit["calibration_factor"]) == pytest.approx(1.0, abs=0.05)
    assert float(fit["slope_ci_low"]) < float(fit["slope"]) < float(fit["slope_ci_high"])
    record = json.loads((out / "calibration" / "calibration.json").read_text())
    assert record["Unwrapping"] == "romeo" and record["Scans"]["sub-phantom"]["ReferenceRegion"]
    assert (out / "calibration" / "figures" / "sub-phantom_calibration.png").is_file()
    tubes = list(csv.DictReader((out / "calibration" / "calibration_tubes.tsv").open(), delimiter="\t"))
    assert len(tubes) == 6 and all(int(t["n_voxels"]) > 500 for t in tubes)


def test_lesions_matched_across_sessions_and_their_change():
    from qsmprep.analysis.lesion_change import lesion_change_rows, match_lesions

    shape = (30, 30, 30)
    first, later = np.zeros(shape, np.int16), np.zeros(shape, np.int16)
    first[_ball(shape, (8, 8, 8), 3)] = 1
    first[_ball(shape, (20, 20, 20), 3)] = 2
    first[_ball(shape, (8, 22, 8), 2)] = 3              # gone by the later session
    later[_ball(shape, (21, 20, 20), 3)] = 1            # numbered the other way round, moved 1 voxel
    later[_ball(shape, (9, 8, 8), 3)] = 2
    later[_ball(shape, (22, 6, 22), 2)] = 3             # new
    pairs, new, missing = match_lesions(first, later)
    assert [(a, b) for a, b, _ in pairs] == [(1, 2), (2, 1)] and new == [3] and missing == [3]
    means_first = {1: (0.30, 100, "cavernous malformation"), 2: (0.20, 100, "cavernous malformation"),
                   3: (0.01, 30, "MS lesion")}
    means_later = {2: (0.33, 100, "cavernous malformation"), 1: (0.204, 100, "cavernous malformation"),
                   3: (0.02, 30, "MS lesion")}
    rows = lesion_change_rows("sub-1", "ses-1", "ses-2", pairs, new, missing, means_first=means_first,
                              means_later=means_later, acq_first="2025-01-01T00:00:00",
                              acq_later="2027-01-01T00:00:00")
    by = {(r["status"], r.get("lesion_first"), r.get("lesion_later")): r for r in rows}
    grow = by[("matched", 1, 2)]
    years = 730 / 365.25
    assert grow["pct_change"] == pytest.approx(10.0) and grow["years"] == pytest.approx(years)
    assert grow["pct_change_per_year"] == pytest.approx(10.0 / years) and grow["flagged"]
    small = by[("matched", 2, 1)]
    assert small["pct_change"] == pytest.approx(2.0) and not small["flagged"]
    assert {r["status"] for r in rows} == {"matched", "new", "not-found"}
    # a lesion whose χ is near the reference: its % change is not flagged, and the row says why
    rows = lesion_change_rows("sub-1", "ses-1", "ses-2", [(3, 3, 10)], [], [], means_first=means_first,
                              means_later=means_later)
    assert rows[0]["pct_change"] == pytest.approx(100.0) and not rows[0]["flagged"] and "not flagged" in rows[0]["reason"]


def test_lesion_masks_off_their_grid_or_too_coarse_voxels_are_refused(tmp_path):
    """A mask not on the grid of its space's image would be misplaced silently; a 5 mm slice
    leaves no reference within the default 5 mm: both are refused before processing."""
    from types import SimpleNamespace

    from qsmprep.workflows.lesions import check_lesion_input

    t1w = tmp_path / "t1w.nii.gz"
    nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)).to_filename(t1w)
    mask = tmp_path / "mask.nii.gz"
    nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(mask)
    rec = SimpleNamespace(prefix="sub-01", t1w=str(t1w), voxel_size=(1.0, 1.0, 1.0))
    found = {"lesions": str(mask), "space": "T1w"}
    with pytest.raises(InputError, match="not on the grid of t1w.nii.gz"):
        check_lesion_input(found, rec)
    nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)).to_filename(mask)
    check_lesion_input(found, rec)
    with pytest.raises(InputError, match="set --lesion-options"):
        check_lesion_input(found, SimpleNamespace(prefix="sub-01", t1w=str(t1w), voxel_size=(1.0, 1.0, 5.0)))

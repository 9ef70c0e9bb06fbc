"""Group level: statistics against textbook and hand-computed values, tables, report, CLI."""

import csv
import json
import math
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, odr, stats

from qsmprep.analysis import agreement
from qsmprep.analysis import group as g
from qsmprep.analysis import qc as gqc
from qsmprep.analysis.roi import ROISTATS_COLUMNS
from qsmprep.analysis.summary import comparison_level, roi_by_group
from qsmprep.cli.run import main

# Bland & Altman, Lancet 1986, Table 1: peak expiratory flow rate (l/min), first readings of the
# Wright and the mini Wright meter in 17 subjects; paper: mean difference -2.1, SD 38.8,
# limits of agreement (mean +- 2 SD) -79.7 to 75.5 l/min.
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]


def test_bland_altman_textbook_example():
    res = g.bland_altman(MINI, WRIGHT, k=2.0)  # differences Wright - mini, as in the paper
    assert res["n"] == 17
    assert round(res["mean_diff"], 1) == -2.1
    assert round(res["sd_diff"], 1) == 38.8
    # the paper computes the limits from the rounded mean and SD: -2.1 -+ 2 x 38.8
    assert res["loa_lower"] == pytest.approx(-79.7, abs=0.06) and res["loa_upper"] == pytest.approx(75.5, abs=0.1)
    default = g.bland_altman(MINI, WRIGHT)
    assert default["loa_upper"] == pytest.approx(res["mean_diff"] + 1.96 * res["sd_diff"])
    with_nan = g.bland_altman([*MINI, np.nan], [*WRIGHT, 300])
    assert with_nan["n"] == 17 and with_nan["mean_diff"] == pytest.approx(res["mean_diff"])


@pytest.mark.parametrize("delta", [1.0, 0.25, 4.0])
def test_deming_matches_odrpack(delta):
    rng = np.random.default_rng(3)
    truth = rng.uniform(-0.05, 0.25, 40)
    x = truth + rng.normal(0, 0.01, truth.size)
    y = 0.1 + 1.3 * truth + rng.normal(0, 0.01 * math.sqrt(delta), truth.size)
    res = g.deming_regression(x, y, delta=delta)
    # ODRPACK (scipy.odr): weighted orthogonal distance regression with sd_y / sd_x = sqrt(delta)
    fit = odr.ODR(odr.RealData(x, y, sx=np.ones_like(x), sy=np.full_like(y, math.sqrt(delta))),
                  odr.unilinear, beta0=[1.0, 0.0]).run()
    assert res["slope"] == pytest.approx(fit.beta[0], rel=1e-5)
    assert res["intercept"] == pytest.approx(fit.beta[1], abs=1e-6)


def test_deming_orthogonal_is_first_principal_axis_and_exact_line():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    y = 0.7 * x + rng.normal(scale=0.4, size=50)
    cov = np.cov(np.vstack([x, y]))
    w, v = np.linalg.eigh(cov)
    axis = v[:, np.argmax(w)]
    assert g.deming_regression(x, y)["slope"] == pytest.approx(axis[1] / axis[0], rel=1e-10)
    line = g.deming_regression([1, 2, 3, 4], [3, 5, 7, 9], delta=2.0)
    assert line["slope"] == pytest.approx(2.0) and line["intercept"] == pytest.approx(1.0)


def test_pearson_and_pooled_sd():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert g.pearson_r(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    a, b = [1.0, 2.0, 4.0], [10.0, 13.0]
    expected = math.sqrt((2 * np.var(a, ddof=1) + 1 * np.var(b, ddof=1)) / 3)
    assert g.pooled_sd([a, b, [7.0]]) == pytest.approx(expected)


def test_ssim_equals_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(size=(24, 26, 20)), 1.0) * 0.1
    b = a + rng.normal(scale=0.02, size=a.shape)
    mean, full = structural_similarity(a, b, data_range=0.3, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, full=True)
    ours = agreement.ssim_map(a, b, data_range=0.3)
    assert np.allclose(ours, full, atol=1e-10)
    pad = 5  # skimage averages away from the border: (win_size - 1) // 2 with win_size 11
    assert ours[pad:-pad, pad:-pad, pad:-pad].mean() == pytest.approx(mean, abs=1e-10)
    assert agreement.ssim_map(a, a, data_range=0.3) == pytest.approx(1.0)


def test_searchlight_matches_brute_force():
    rng = np.random.default_rng(5)
    shape, vox = (12, 11, 10), (1.0, 1.5, 2.0)
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    mask = np.zeros(shape, bool)
    mask[2:10, 1:10, 2:9] = True
    rmse, ssim = agreement.searchlight_agreement(a, b, mask, vox, radius_mm=3.0, data_range=4.0)
    ii, jj, kk = np.indices(shape)
    c1, c2 = (0.01 * 4.0) ** 2, (0.03 * 4.0) ** 2
    for v in [(5, 5, 5), (2, 1, 2), (9, 9, 8)]:
        dist2 = ((ii - v[0]) * vox[0]) ** 2 + ((jj - v[1]) * vox[1]) ** 2 + ((kk - v[2]) * vox[2]) ** 2
        sel = (dist2 <= 9.0 + 1e-9) & mask
        x, y = a[sel], b[sel]
        assert rmse[v] == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), rel=1e-5)
        mx, my = x.mean(), y.mean()
        cov = np.mean((x - mx) * (y - my))
        expect = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (x.var() + y.var() + c2))
        assert ssim[v] == pytest.approx(expect, rel=1e-4, abs=1e-5)
    assert np.isnan(rmse[0, 0, 0]) and np.isnan(ssim[11, 10, 9])


# ----------------------------------------------------------------------------- synthetic cohort

SITES = {"A": ("siteA", "Siemens"), "B": ("siteB", "Siemens"), "C": ("siteC", "GE")}
# putamen-L χ means per participant (rows) and session A, B, C (columns)
PUT_L = {"01": (0.100, 0.110, 0.090), "02": (0.120, 0.120, 0.125), "03": (0.080, 0.100, 0.070),
         "04": (0.110, 0.130, 0.100)}


def _roistats_rows(put_l, put_r, r2):
    rows = []
    for label, name, hemi, roi, chi in ((1, "Left-Putamen", "L", "putamen", put_l),
                                        (2, "Right-Putamen", "R", "putamen", put_r),
                                        (3, "Brainstem", "n/a", "n/a", math.nan)):
        for mapname, units, mean in (("chi", "ppm", chi), ("r2star", "1/s", r2 + label)):
            n = 0 if math.isnan(mean) else 100
            rows.append({"label": label, "name": name, "hemisphere": hemi, "roi": roi, "map": mapname,
                         "units": units, "n_voxels": n, "n_excluded": 3, "eroded": 1, "volume_mm3": n * 1.0,
                         "mean": mean, "median": mean, "std": 0.01, "iqr": 0.01, "p5": mean, "p95": mean,
                         "mass": mean * n})
    return rows


def _write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROISTATS_COLUMNS, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("n/a" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def qc_doc(status="pass", *, mask_ml=1350.0, jumps=0.001, units="int12", raw=(0, 4095)):
    """A ``*_desc-qc_metrics.json`` document as the participant level writes it."""
    metrics = {
        "phase_units": {"Value": units, "Units": None, "Status": "pass", "Threshold": "recognised unit",
                        "Description": "unit the phase images were scaled from", "Message": ""},
        "phase_raw_range": {"Value": list(raw), "Units": None, "Status": "pass", "Threshold": "matches the unit",
                            "Description": "minimum and maximum of the raw phase", "Message": ""},
        "mask_volume_ml": {"Value": mask_ml, "Units": "ml", "Status": "pass" if mask_ml > 900 else "warn",
                           "Threshold": "warn < 900 ml or > 2000 ml", "Description": "brain mask volume",
                           "Message": "" if mask_ml > 900 else
                           f"The brain mask is {mask_ml:g} ml; check the mask figure and pass --mask if it is cut."},
        "phase_jump_fraction": {"Value": jumps, "Units": None, "Status": status if jumps > 0.01 else "pass",
                                "Threshold": "warn > 1 %, fail > 5 %", "Description": "fraction of voxels with a "
                                "residual 2π jump after unwrapping",
                                "Message": "" if jumps <= 0.01 else f"{jumps:.0%} of the brain has residual phase "
                                "jumps; try --unwrapping romeo."},
    }
    warnings = [m["Message"] for m in metrics.values() if m["Status"] != "pass"]
    worst = gqc.worst_status([m["Status"] for m in metrics.values()])
    return {"Status": worst, "Warnings": warnings, "PhaseUnits": units, "PhaseUnitsSource": "auto-detected",
            "PhaseRawRange": list(raw), "Metrics": metrics}


#: QC of some scans of the cohort (sub-05 has none: a run before QC metrics existed)
COHORT_QC = {"sub-02_ses-B": qc_doc(mask_ml=610.0), "sub-03_ses-C": qc_doc("fail", jumps=0.08, mask_ml=850.0),
             "sub-04_ses-A": qc_doc(units="radians", raw=(-3.1416, 3.1416))}


@pytest.fixture()
def cohort(tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t31\tF\nsub-02\t45\tM\n"
                                           "sub-03\t28\tF\nsub-04\t52\tM\nsub-05\t60\tF\n")
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.normal(size=(16, 16, 12)), 1.5) * 0.3
    mask = np.zeros(base.shape, bool)
    mask[3:13, 3:13, 2:10] = True
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for sub, values in {**PUT_L, "05": (0.095, None, None)}.items():
        sess_rows = ["session_id\tsite"]
        for i, ses in enumerate("ABC"):
            if values[i] is None:
                continue
            site, vendor = SITES[ses]
            sess_rows.append(f"ses-{ses}\t{site}")
            prefix = f"sub-{sub}_ses-{ses}"
            anat = out / f"sub-{sub}" / f"ses-{ses}" / "anat"
            _write_tsv(anat / f"{prefix}_desc-aseg_roistats.tsv",
                       _roistats_rows(values[i], values[i] - 0.01, 20.0 + i))
            raw = f"sub-{sub}/ses-{ses}/anat/{prefix}_echo-1_part-mag_MEGRE.nii.gz"
            (anat / f"{prefix}_Chimap.json").write_text(json.dumps({"Sources": [f"bids:raw:{raw}"]}))
            if sub != "05":
                (anat / f"{prefix}_desc-qc_metrics.json").write_text(json.dumps(COHORT_QC.get(prefix, qc_doc())))
            (bids / raw).parent.mkdir(parents=True, exist_ok=True)
            (bids / raw.replace(".nii.gz", ".json")).write_text(json.dumps({"Manufacturer": vendor, "EchoTime": 0.004}))
            if sub == "01":  # coregistered χ maps on one T1w grid
                chi = np.where(mask, base + (0.02 * i) * rng.normal(size=base.shape), 0).astype(np.float32)
                nib.Nifti1Image(chi, affine).to_filename(anat / f"{prefix}_space-T1w_Chimap.nii.gz")
                nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(
                    anat / f"{prefix}_space-T1w_desc-brain_mask.nii.gz")
        (bids / f"sub-{sub}").mkdir(exist_ok=True)
        (bids / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("\n".join(sess_rows) + "\n")
    return bids, out


def test_long_and_wide_tables_carry_metadata(cohort):
    bids, out = cohort
    long = g.load_long_table(out, bids)
    assert len(long) == 13 * 6  # 13 scans x 3 labels x 2 maps
    row = long[(long["scan"] == "sub-03_ses-C") & (long["label"] == 1) & (long["map"] == "chi")].iloc[0]
    assert (row["site"], row["vendor"], row["age"], row["sex"], row["session"]) == ("siteC", "GE", 28, "F", "C")
    assert row["mean"] == pytest.approx(0.070)
    wide = g.wide_table(long)
    assert len(wide) == 13 and wide["scan"].is_unique
    assert wide.set_index("scan").loc["sub-02_ses-B", "aseg:putamen_L:chi"] == pytest.approx(0.120)
    assert "aseg:Brainstem:chi" not in wide  # no measured voxels: no column
    assert wide.set_index("scan").loc["sub-02_ses-B", "aseg:Brainstem:r2star"] == pytest.approx(24.0)


def test_between_subject_sd_by_hand(cohort):
    bids, out = cohort
    bsd = g.between_subject_sd(g.load_long_table(out, bids))
    sel = bsd[(bsd["map"] == "chi") & (bsd["roi_key"] == "putamen_L")].set_index(["level", "group"])
    site_a = [v[0] for v in PUT_L.values()] + [0.095]
    site_b = [v[1] for v in PUT_L.values()]
    site_c = [v[2] for v in PUT_L.values()]
    assert sel.loc[("within site", "siteA"), "sd"] == pytest.approx(np.std(site_a, ddof=1))
    assert sel.loc[("within site", "siteA"), "n_participants"] == 5
    assert sel.loc[("within site", "siteC"), "sd"] == pytest.approx(np.std(site_c, ddof=1))
    pooled = math.sqrt((4 * np.var(site_a, ddof=1) + 3 * np.var(site_b, ddof=1) + 3 * np.var(site_c, ddof=1)) / 10)
    assert sel.loc[("within site", "pooled"), "sd"] == pytest.approx(pooled)
    siemens = site_a + site_b
    assert sel.loc[("within vendor", "Siemens"), "sd"] == pytest.approx(np.std(siemens, ddof=1))
    assert sel.loc[("within vendor", "GE"), "sd"] == pytest.approx(np.std(site_c, ddof=1))
    pooled_v = math.sqrt((8 * np.var(siemens, ddof=1) + 3 * np.var(site_c, ddof=1)) / 11)
    assert sel.loc[("within vendor", "pooled"), "sd"] == pytest.approx(pooled_v)
    assert sel.loc[("across vendors", "all"), "sd"] == pytest.approx(np.std(siemens + site_c, ddof=1))
    summary = g.roi_summary(g.load_long_table(out, bids)).set_index(["map", "roi_key"])
    assert summary.loc[("chi", "putamen_L"), "n_scans"] == 13
    assert summary.loc[("chi", "putamen_L"), "mean"] == pytest.approx(np.mean(siemens + site_c))


def test_paired_reproducibility_by_hand(cohort):
    bids, out = cohort
    repro, points = g.paired_reproducibility(g.load_long_table(out, bids))
    assert set(zip(repro["first"], repro["second"])) == {
        ("ses-A@siteA", "ses-B@siteB"), ("ses-A@siteA", "ses-C@siteC"), ("ses-B@siteB", "ses-C@siteC")}
    row = repro[(repro["first"] == "ses-A@siteA") & (repro["second"] == "ses-C@siteC") & (repro["map"] == "chi")
                & (repro["roi_key"] == "putamen_L")].iloc[0]
    a = np.array([v[0] for v in PUT_L.values()])
    c = np.array([v[2] for v in PUT_L.values()])
    d = c - a
    assert row["n_pairs"] == 4  # sub-05 has one scan only
    assert row["ba_mean_diff"] == pytest.approx(d.mean())
    assert row["ba_loa_upper"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert row["pearson_r"] == pytest.approx(np.corrcoef(a, c)[0, 1])
    pooled = repro[(repro["first"] == "ses-A@siteA") & (repro["second"] == "ses-C@siteC") & (repro["map"] == "chi")
                   & (repro["roi_key"] == "all")].iloc[0]
    assert pooled["n_pairs"] == 8  # both putamina; the unmeasured brainstem is left out
    all_a = np.r_[a, a - 0.01]
    all_c = np.r_[c, c - 0.01]
    assert pooled["deming_slope"] == pytest.approx(g.deming_regression(all_a, all_c)["slope"])
    assert len(points) == 3 * 4 * (2 + 3)  # pair kinds x participants x (2 chi + 3 r2star ROIs)


def test_group_level_writes_tables_maps_and_report(cohort, capsys):
    bids, out = cohort
    rc = main([str(bids), str(out), "group"])
    assert rc == 0, capsys.readouterr().err
    gdir = out / "group"
    for name in ("roistats_long", "roistats_wide", "roi_summary", "between_subject_sd", "reproducibility",
                 "reproducibility_points", "voxelwise_agreement"):
        assert (gdir / f"{name}.tsv").is_file(), name
    voxel = pd.read_csv(gdir / "voxelwise_agreement.tsv", sep="\t")
    ok = voxel[voxel["status"] == "ok"]
    assert set(ok["participant_id"]) == {"sub-01"} and len(ok) == 3
    assert (ok["space"] == "T1w").all()
    # ses-A vs ses-B differ by less noise than ses-A vs ses-C
    by_pair = ok.set_index(["first", "second"])
    ab, ac = ("sub-01_ses-A", "sub-01_ses-B"), ("sub-01_ses-A", "sub-01_ses-C")
    assert by_pair.loc[ab, "ssim"] > by_pair.loc[ac, "ssim"]
    assert by_pair.loc[ab, "rmse"] < by_pair.loc[ac, "rmse"]
    # session A is noise-free, B has noise of SD 0.02 ppm inside the mask
    assert by_pair.loc[ab, "rmse"] == pytest.approx(0.02, rel=0.1)
    maps = sorted((gdir / "voxelwise").glob("*.nii.gz"))
    assert len(maps) == 6
    ssim_map = np.asarray(nib.load(gdir / "voxelwise" / "sub-01_ses-A_vs_ses-B_space-T1w_desc-searchlightssim_map.nii.gz").dataobj)
    assert 0.0 < ssim_map[8, 8, 6] <= 1.0 and ssim_map[0, 0, 0] == 0
    others = voxel[voxel["status"] != "ok"]
    assert len(others) == 9 and others["status"].str.contains("no space-").all()
    html = (gdir / "group.html").read_text()
    assert "Bland" in html and "data:image/png;base64," in html and "siteC" in html
    pngs = sorted((gdir / "figures").glob("*.png"))
    assert any("roiplot" in p.name for p in pngs) and sum("blandaltman" in p.name for p in pngs) == 6
    long = pd.read_csv(gdir / "roistats_long.tsv", sep="\t")
    assert {"participant_id", "session", "site", "vendor", "age", "sex", "label", "mean"} <= set(long.columns)


def test_group_qc_table_one_row_per_acquisition(cohort):
    bids, out = cohort
    from qsmprep.reports.group import run_group

    gdir = run_group(bids, out)
    qc = pd.read_csv(gdir / "qc.tsv", sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"session": str})
    assert list(qc.columns[:10]) == ["subject", "session", "acquisition", "run", "scan", "status", "n_warnings",
                                     "warnings", "phase_units", "phase_units_source"]
    assert list(qc.columns[10:]) == ["phase_raw_range", "mask_volume_ml", "phase_jump_fraction"]
    assert len(qc) == 13 and qc["scan"].is_unique  # 12 scans with a QC file + sub-05 without one
    by = qc.set_index("scan")
    assert by.loc["sub-01_ses-A", "status"] == "pass" and by.loc["sub-01_ses-A", "n_warnings"] == 0
    assert (by.loc["sub-02_ses-B", "status"], by.loc["sub-02_ses-B", "mask_volume_ml"]) == ("warn", 610.0)
    failed = by.loc["sub-03_ses-C"]
    assert failed["status"] == "fail" and failed["n_warnings"] == 2
    assert failed["warnings"] == ("The brain mask is 850 ml; check the mask figure and pass --mask if it is cut. | "
                                  "8% of the brain has residual phase jumps; try --unwrapping romeo.")
    assert failed["phase_jump_fraction"] == pytest.approx(0.08)
    assert (by.loc["sub-04_ses-A", "phase_units"], by.loc["sub-04_ses-A", "phase_raw_range"]) == (
        "radians", "[-3.1416, 3.1416]")
    assert (failed["subject"], failed["session"], failed["phase_units_source"]) == (3, "C", "auto-detected")
    missing = by.loc["sub-05_ses-A"]
    assert pd.isna(missing["status"]) and missing["warnings"].startswith("QC metrics not available")
    assert pd.isna(missing["mask_volume_ml"])


def test_group_report_order_qc_then_roi_summary_then_plots(cohort):
    bids, out = cohort
    from qsmprep.reports.group import run_group

    html = (run_group(bids, out) / "group.html").read_text()
    body = html[html.index("<body>"):]
    qc, roi, first_img = body.index("<table class=\"qc\">"), body.index("<table class=\"roisummary\">"), \
        body.index("<img")
    assert qc < roi < first_img
    assert body.count("<table") == 2  # the long tables are links, not printed
    for name in ("qc", "roistats_long", "roistats_wide", "between_subject_sd", "reproducibility",
                 "voxelwise_agreement"):
        assert f"<a href=\"{name}.tsv\">" in body, name
    # QC rows coloured by status, the worst first
    qc_table = body[qc:body.index("</table>", qc)]
    statuses = re.findall(r"<tr class=\"(\w+)\"><td class=\"t\">(sub-[^<]+)</td>", qc_table)
    assert statuses[:3] == [("fail", "sub-03_ses-C"), ("warn", "sub-02_ses-B"), ("warn", "sub-05_ses-A")]
    assert len(statuses) == 13 and {s for s, _ in statuses[3:]} == {"pass"}
    assert "<td class=\"fail\" title=\"warn &gt; 1 %, fail &gt; 5 %\">0.08</td>" in qc_table
    # one pivoted ROI table: regions with hemisphere, mean ± SD (n) per site, units in the header
    roi_table = body[roi:body.index("</table>", roi)]
    header = re.findall(r"<th>([^<]+)</th>", roi_table)
    assert header[:4] == ["siteA χ (ppm) mean ± SD (n)", "siteB χ (ppm) mean ± SD (n)",
                          "siteC χ (ppm) mean ± SD (n)", "all sites χ (ppm) mean ± SD (n)"]
    assert header[4] == "siteA R2* (1/s) mean ± SD (n)"
    rows = {m[0]: m[1:] for m in re.findall(r"<tr><td class=\"t\">([^<]+)</td>" + "<td>([^<]+)</td>" * 8, roi_table)}
    assert set(rows) == {"putamen (L)", "putamen (R)", "Brainstem"}
    site_a = [v[0] for v in PUT_L.values()] + [0.095]
    digits = int(re.search(r"\.(\d+) ±", rows["putamen (L)"][0]).group(1).__len__())
    assert rows["putamen (L)"][0] == f"{np.mean(site_a):.{digits}f} ± {np.std(site_a, ddof=1):.{digits}f} (5)"
    assert rows["putamen (L)"][3].endswith("(13)") and rows["Brainstem"][0] == "–"


def test_comparison_level_and_roi_by_vendor(cohort):
    bids, out = cohort
    long = g.load_long_table(out, bids)
    assert comparison_level(long) == "site"
    one_site = long.assign(site="siteA")
    assert comparison_level(one_site) == "vendor"
    assert comparison_level(one_site.assign(vendor="GE")) == "site"
    by_vendor = roi_by_group(one_site).set_index(["map", "roi_key", "group"])
    siemens = [v[0] for v in PUT_L.values()] + [0.095] + [v[1] for v in PUT_L.values()]
    row = by_vendor.loc[("chi", "putamen_L", "Siemens")]
    assert row["n_scans"] == 9 and row["mean"] == pytest.approx(np.mean(siemens))
    assert row["sd"] == pytest.approx(np.std(siemens, ddof=1)) and row["level"] == "vendor"
    assert by_vendor.loc[("chi", "putamen_L", "all"), "n_scans"] == 13
    assert by_vendor.loc[("chi", "putamen_L", "GE"), "region"] == "putamen (L)"


def test_box_only_from_three_scans_otherwise_strip():
    from qsmprep.reports import figures

    assert [figures.group_plot_kind(n) for n in range(1, 6)] == ["strip", "strip", "box", "box", "box"]
    long = pd.DataFrame({"atlas": "aseg", "map": "chi", "roi_key": "putamen_L",
                         "mean": [0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.08],
                         "site": ["A", "A", "B", "B", "B", "B", "B"]})
    fig = figures.roi_plot_figure(long, atlas="aseg", mapname="chi", by="site", units="ppm")
    try:
        ax = fig.axes[0]
        gids = [line.get_gid() for line in ax.lines]
        assert gids.count("box") == 1 and gids.count("mean") == 1 and gids.count("points") == 2
        box = next(line for line in ax.lines if line.get_gid() == "box")
        assert np.allclose((box.get_xdata().min() + box.get_xdata().max()) / 2, 2.0)  # the box is site B's (5 scans)
        mean = next(line for line in ax.lines if line.get_gid() == "mean")
        assert np.allclose(mean.get_ydata(), 0.11) and np.allclose(np.mean(mean.get_xdata()), 1.0)
        points = [line for line in ax.lines if line.get_gid() == "points"]
        assert sorted(len(p.get_xdata()) for p in points) == [2, 5]
        assert all(np.ptp(p.get_xdata()) > 0 for p in points)  # jittered
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_empty_reproducibility_tables_keep_their_header(cohort):
    bids, out = cohort
    for ses in ("B", "C"):  # one scan per participant: no pair to compare
        for folder in out.glob(f"sub-*/ses-{ses}"):
            shutil.rmtree(folder)
    from qsmprep.reports.group import run_group

    gdir = run_group(bids, out)
    for name, columns in (("reproducibility", g.REPRO_COLUMNS), ("reproducibility_points", g.POINTS_COLUMNS)):
        lines = (gdir / f"{name}.tsv").read_text().splitlines()
        assert lines == ["\t".join(columns)], name
    assert "No participant has two scans" in (gdir / "group.html").read_text()
    assert len(pd.read_csv(gdir / "qc.tsv", sep="\t")) == 5


def _browser():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot_variance(html_path, tmp_path):
    """Render ``html_path`` in headless Chromium; return the screenshot's pixel variance."""
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser: install Debian's chromium (.ci/run does) to render the reports")
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,1600", html_path.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    return float(np.var(pixels[..., :3]))


def test_group_report_renders_in_headless_browser(cohort, tmp_path):
    if _browser() is None:  # before the group level, not after it
        pytest.skip("no headless browser: install Debian's chromium (.ci/run does) to render the reports")
    bids, out = cohort
    from qsmprep.reports.group import run_group

    gdir = run_group(bids, out)
    assert screenshot_variance(gdir / "group.html", tmp_path) > 1e-3


def test_calibration_factors_scale_every_chi_value_per_site(cohort, capsys):
    """``group --calibration``: each scan's χ values (ROI rows of map chi, voxel-wise RMSE) are
    multiplied by its site's factor, R2* rows are not; a site without a factor stops the run."""
    bids, out = cohort
    assert main([str(bids), str(out), "group"]) == 0
    plain = pd.read_csv(out / "group" / "roistats_long.tsv", sep="\t", na_values=["n/a"])
    plain_vox = pd.read_csv(out / "group" / "voxelwise_agreement.tsv", sep="\t")
    factors = {"siteA": 1.0, "siteB": 0.5, "siteC": 2.0}
    table = out.parent / "calibration.tsv"
    table.write_text("site\tcalibration_factor\n" + "".join(f"{s}\t{f}\n" for s, f in factors.items()))
    assert main([str(bids), str(out), "group", "--calibration", str(table)]) == 0, capsys.readouterr().err
    cal = pd.read_csv(out / "group" / "roistats_long.tsv", sep="\t", na_values=["n/a"])
    key = ["scan", "label", "map"]
    both = plain.merge(cal, on=key, suffixes=("", "_cal"))
    assert len(both) == len(plain)
    f = both["site"].map(factors)
    chi = both["map"] == "chi"
    for col in ("mean", "median", "std", "mass"):
        assert np.allclose(both.loc[chi, f"{col}_cal"], both.loc[chi, col] * f[chi], equal_nan=True), col
        assert np.allclose(both.loc[~chi, f"{col}_cal"], both.loc[~chi, col], equal_nan=True), col
    assert np.allclose(both.loc[chi, "calibration_factor"], f[chi]) and both.loc[~chi, "calibration_factor"].isna().all()
    # sub-01 ses-A (siteA, 1.0) vs ses-B (siteB, 0.5): B's noise SD 0.02 becomes ~0.01 beside A's halved signal
    vox = pd.read_csv(out / "group" / "voxelwise_agreement.tsv", sep="\t").set_index(["first", "second"])
    ab = ("sub-01_ses-A", "sub-01_ses-B")
    assert vox.loc[ab, "rmse"] != pytest.approx(plain_vox.set_index(["first", "second"]).loc[ab, "rmse"])
    html = (out / "group" / "group.html").read_text()
    assert "id=\"calibration\"" in html and "0.5000" in html
    # a site without a factor: exit 2 naming it
    table.write_text("site\tcalibration_factor\nsiteA\t1.0\nsiteB\t0.5\n")
    assert main([str(bids), str(out), "group", "--calibration", str(table)]) == 2
    err = capsys.readouterr().err
    assert "siteC" in err and "calibration.tsv" in err
    table.write_text("site\tcalibration_factor\nsiteA\t-1\n")
    assert main([str(bids), str(out), "group", "--calibration", str(table)]) == 2
    assert "positive calibration_factor" in capsys.readouterr().err
    # the participant level refuses it (the derivatives stay on their own scale)
    with pytest.raises(SystemExit) as exc:
        main([str(bids), str(out), "participant", "--calibration", str(table)])
    assert exc.value.code == 2

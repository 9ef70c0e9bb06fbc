"""QC block of the participant report, orientation of the mosaics, plots without offset notation,
and the phase units in the methods text."""

import json
import re

import matplotlib
import nibabel as nib
import numpy as np
import pytest

from qsmprep.bids import GreRecord, derivative_path
from qsmprep.config import Config
from qsmprep.reports import citation, figures
from qsmprep.reports.subject import write_subject_report

matplotlib.use("Agg", force=True)


def _record(**kw):
    base = dict(subject="01", session=None, acquisition=None, run=None, suffix="MEGRE",
                echo_times=[0.004, 0.012, 0.02], b0=3.0, magnitude=["m"], phase=["p"], t1w=None,
                shape=(20, 22, 16), voxel_size=(2.0, 2.0, 2.0))
    base.update(kw)
    return GreRecord(**base)


def _metric(value, units, status, threshold, description, message=""):
    return {"Value": value, "Units": units, "Status": status, "Threshold": threshold, "Description": description,
            "Message": message}


def qc_document(*, mask_fraction=42.0, jumps=0.002):
    """A QC file as the participant level writes it; warns when the mask covers < 5 % of the FOV,
    fails with more than 5 % residual phase jumps."""
    mask_status = "warn" if mask_fraction < 5 else "pass"
    jump_status = "fail" if jumps > 0.05 else ("warn" if jumps > 0.01 else "pass")
    mask_msg = (f"The brain mask covers only {mask_fraction:g} % of the field of view; check the magnitude "
                "figure and give a better mask with --mask." if mask_status != "pass" else "")
    jump_msg = (f"{jumps:.0%} of the brain has residual phase jumps; try --unwrapping romeo."
                if jump_status != "pass" else "")
    metrics = {
        "phase_units": _metric("int12", None, "pass", "recognised unit", "unit the phase was scaled from"),
        "phase_raw_range": _metric([0, 4095], None, "pass", "consistent with the unit", "raw phase min and max"),
        "mask_volume_ml": _metric(1312.5, "ml", "pass", "warn < 900 ml or > 2000 ml", "volume of the brain mask"),
        "mask_fraction_fov": _metric(mask_fraction, "%", mask_status, "warn < 5 % or > 90 %",
                                     "share of the field of view inside the mask", mask_msg),
        "phase_jump_fraction": _metric(jumps, None, jump_status, "warn > 0.01, fail > 0.05",
                                       "fraction of mask voxels next to a residual 2π jump", jump_msg),
        "chi_p01": _metric(-0.081, "ppm", "pass", "warn < -0.3 ppm", "1st percentile of χ in the mask"),
    }
    statuses = [m["Status"] for m in metrics.values()]
    status = "fail" if "fail" in statuses else ("warn" if "warn" in statuses else "pass")
    return {"Status": status, "Warnings": [m["Message"] for m in metrics.values() if m["Message"]],
            "PhaseUnits": "int12", "PhaseUnitsSource": "auto-detected", "PhaseRawRange": [0, 4095],
            "Metrics": metrics}


def _write_outputs(out, rec, qc=None, chi=True):
    """A fake participant output folder: χ map with its sidecar and, optionally, the QC file."""
    path = derivative_path(out, rec.entities, "Chimap")
    path.parent.mkdir(parents=True, exist_ok=True)
    if chi:
        data = np.zeros(rec.shape, np.float32)
        data[4:16, 4:18, 3:13] = 0.05
        nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(
            {"ReferenceRegion": "mask", "BackgroundRemoval": "lbv", "DipoleInversion": "medi"}))
    if qc is not None:
        derivative_path(out, rec.entities, "metrics", desc="qc", extension=".json").write_text(json.dumps(qc))


def _qc_section(html):
    start = html.index("<section class=\"qc\"")
    return html[start:html.index("</section>", start)]


def test_report_opens_with_amber_qc_warnings_and_never_says_no_errors(tmp_path):
    rec = _record()
    _write_outputs(tmp_path, rec, qc_document(mask_fraction=3.2))
    html = write_subject_report(tmp_path, "01", [rec], Config(), "run1").read_text()
    assert "No errors" not in html
    body = html[html.index("<body>"):]
    # the QC block comes first: before the acquisitions, the χ figure and the configuration
    assert body.index("Quality control") < body.index("id=\"acquisitions\"") < body.index("<img")
    qc = _qc_section(html)
    assert "<p class=\"warn\">No processing errors; 1 QC warning(s).</p>" in qc
    assert "<span class=\"badge warn\">WARN</span> sub-01</h3>" in qc
    warning = "The brain mask covers only 3.2 % of the field of view"
    assert qc.index(warning) < qc.index("<table")  # the warnings come before the table
    # in the table the warning metric is the first row, its status cell amber, value with units
    rows = re.findall(r"<tr><td class=\"t\"[^>]*>([^<]+)<code>(\w+)</code>.*?</tr>", qc)
    assert rows[0][1] == "mask_fraction_fov" and len(rows) == 6
    assert "<td>3.2 %</td><td class=\"t warn\">warn</td><td class=\"t\">warn &lt; 5 % or &gt; 90 %</td>" in qc
    assert "<td>1312 ml</td>" in qc
    assert "<td class=\"t pass\">pass</td>" in qc and "class=\"ok\"" not in qc
    assert "Phase units used: <b>int12 (auto-detected; raw range 0 to 4095)</b>" in qc


def test_report_qc_failure_is_red_and_crashes_still_listed(tmp_path):
    rec = _record()
    _write_outputs(tmp_path, rec, qc_document(jumps=0.12), chi=False)
    crash = tmp_path / "sub-01" / "log" / "run1"
    crash.mkdir(parents=True)
    (crash / "crash-1-inversion.txt").write_text("Node: single_subject_01_wf.inversion\nMemoryError\n")
    html = write_subject_report(tmp_path, "01", [rec], Config(), "run1").read_text()
    qc = _qc_section(html)
    assert "<p class=\"err\">1 step(s) failed in this run; see Errors; 1 QC failure(s).</p>" in qc
    assert "<span class=\"badge fail\">FAIL</span>" in qc and "<td class=\"t fail\">fail</td>" in qc
    assert "<li class=\"err\">12% of the brain has residual phase jumps; try --unwrapping romeo.</li>" in qc
    assert "No errors" not in html


def test_report_all_pass_is_green(tmp_path):
    recs = [_record(run="1"), _record(run="2")]
    for rec in recs:
        _write_outputs(tmp_path, rec, qc_document(), chi=False)
    html = write_subject_report(tmp_path, "01", recs, Config(), "run1").read_text()
    qc = _qc_section(html)
    assert "<p class=\"ok\">No processing errors; all QC metrics passed (2 acquisition(s)).</p>" in qc
    assert qc.count("<span class=\"badge pass\">PASS</span>") == 2
    assert "badge warn" not in qc and "badge fail" not in qc and "td class=\"t warn\"" not in qc


def test_report_without_qc_file_says_not_available_in_amber(tmp_path):
    recs = [_record(run="1"), _record(run="2")]
    _write_outputs(tmp_path, recs[0], qc_document(), chi=False)
    _write_outputs(tmp_path, recs[1], None, chi=False)  # e.g. derivatives of an older run
    qc = _qc_section(write_subject_report(tmp_path, "01", recs, Config(), "run1").read_text())
    assert ("<p class=\"warn\">No processing errors; QC metrics not available for 1 of 2 acquisition(s).</p>"
            in qc)
    assert "class=\"ok\">No processing" not in qc
    assert "<span class=\"badge warn\">QC N/A</span> sub-01_run-2</h3><p class=\"warn\">QC metrics not available" in qc
    # a QC file that says pass while a metric warns is read as warn (the worst metric wins)
    doc = qc_document(mask_fraction=2.0)
    doc.update(Status="pass", Warnings=[])
    _write_outputs(tmp_path, recs[1], doc, chi=False)
    qc = _qc_section(write_subject_report(tmp_path, "01", recs, Config(), "run1").read_text())
    assert "<span class=\"badge warn\">WARN</span> sub-01_run-2</h3>" in qc
    assert "covers only 2 % of the field of view" in qc and "1 QC warning(s)" in qc


# ----------------------------------------------------------------------------- orientation

def test_edge_letters_for_canonical_and_flipped_arrays():
    assert figures.edge_letters(("R", "A", "S"), "axial") == {"left": "L", "right": "R", "bottom": "P", "top": "A"}
    assert figures.edge_letters(("R", "A", "S"), "coronal") == {"left": "L", "right": "R", "bottom": "I", "top": "S"}
    assert figures.edge_letters(("R", "A", "S"), "sagittal") == {"left": "P", "right": "A", "bottom": "I",
                                                                  "top": "S"}
    # an array stored left-to-right reversed (LAS, as from many converters) shows left on the right
    assert figures.edge_letters(("L", "A", "S"), "axial") == {"left": "R", "right": "L", "bottom": "P", "top": "A"}
    assert figures.edge_letters(("L", "P", "S"), "coronal")["left"] == "R"
    assert figures.edge_letters(("L", "P", "S"), "sagittal") == {"left": "A", "right": "P", "bottom": "I",
                                                                  "top": "S"}
    # axes permuted (e.g. sagittal acquisition stored A, S, R): the fixed axis is found by its letter
    assert figures.edge_letters(("A", "S", "R"), "axial") == {"left": "P", "right": "A", "bottom": "L", "top": "R"}
    assert figures.display_convention(("R", "A", "S")) == "neurological"
    assert figures.display_convention(("L", "A", "S")) == "radiological"


@pytest.fixture()
def left_blob_image():
    """A head-like ellipsoid stored LPS (i → subject's left, j → posterior) with a bright blob in
    the subject's left hemisphere (world x < 0) and the anterior half (world y > 0)."""
    shape = (30, 34, 26)
    ii, jj, kk = np.indices(shape)
    vol = np.where(((ii - 14.5) / 12) ** 2 + ((jj - 16.5) / 15) ** 2 + ((kk - 12.5) / 11) ** 2 < 1, 0.3, 0.0)
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = [29.0, 33.0, -25.0]  # world x = 29 - 2i: i > 14.5 is the left side
    vol[20:25, 8:13, 11:15] = 1.0  # i 20..24 → x -19..-11 (left); j 8..12 → y 9..17 (anterior)
    img = nib.Nifti1Image(vol.astype(np.float32), affine)
    world = nib.affines.apply_affine(affine, [22, 10, 13])
    assert world[0] < 0 and world[1] > 0 and nib.aff2axcodes(affine) == ("L", "P", "S")
    return img


def test_subject_left_is_drawn_on_the_image_left(left_blob_image):
    data, zooms, affine = figures.canonical_with_affine(left_blob_image)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    k = int(np.argwhere(data == 1.0)[:, 2].mean())
    axial = figures.display_slice(data, 2, k)
    rows, cols = np.nonzero(axial == 1.0)
    assert cols.max() < axial.shape[1] / 2  # left half of the image (origin="lower": column 0 on the left)
    assert rows.min() > axial.shape[0] / 2  # anterior: upper half with origin="lower"
    coronal = figures.display_slice(data, 1, int(np.argwhere(data == 1.0)[:, 1].mean()))
    assert np.nonzero(coronal == 1.0)[1].max() < coronal.shape[1] / 2
    # the rendered figure: the array drawn in the first axial panel carrying the blob, and its letters
    fig = figures.mosaic_figure(data, zooms, vmin=0, vmax=1, title="χ", cbar_label="χ (ppm)", affine=affine,
                                extent_mask=data > 0)
    try:
        assert "neurological display (left on the left)" in fig._suptitle.get_text()
        panels = [ax for ax in fig.axes if ax.images]
        axial_panels = panels[:6]
        with_blob = [ax for ax in axial_panels if (np.asarray(ax.images[0].get_array()) == 1.0).any()]
        assert with_blob
        for ax in axial_panels + panels[6:]:
            texts = {t.get_gid(): t for t in ax.texts}
            for edge in ("left", "right", "bottom", "top"):
                assert f"orientation-{edge}" in texts, edge
            assert texts["slice-label"].get_path_effects(), "slice labels need an outline"
            assert all(t.get_color() == "white" and t.get_path_effects() for t in ax.texts)
        ax = with_blob[0]
        assert ax.images[0].origin == "lower"
        shown = np.asarray(ax.images[0].get_array())
        assert np.nonzero(shown == 1.0)[1].max() < shown.shape[1] / 2
        texts = {t.get_gid(): t for t in ax.texts}
        assert texts["orientation-left"].get_text() == "L" and texts["orientation-left"].get_position()[0] < 0.5
        assert texts["orientation-right"].get_text() == "R" and texts["orientation-top"].get_text() == "A"
        assert re.fullmatch(r"z = -?\d+ mm", texts["slice-label"].get_text())
        sag = {t.get_gid(): t.get_text() for t in panels[-1].texts}
        assert (sag["orientation-left"], sag["orientation-right"], sag["orientation-top"]) == ("P", "A", "S")
    finally:
        matplotlib.pyplot.close(fig)


# ----------------------------------------------------------------------------- no offset notation

def _offsets(fig):
    fig.canvas.draw()
    return [axis.get_major_formatter().get_offset() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)]


@pytest.mark.parametrize("lo, hi", [(0.10010, 0.10030), (0.10010, 0.10013)])
def test_no_offset_notation_on_chi_axes(lo, hi):
    import pandas as pd

    plt = figures._plt()
    values = np.linspace(lo, hi, 6)
    # the narrow range does get matplotlib's offset by default: this test would see it
    if hi - lo < 1e-4:
        fig, ax = plt.subplots()
        ax.plot(values, values, "o")
        assert any(_offsets(fig))
        plt.close(fig)
    long = pd.DataFrame({"atlas": "aseg", "map": "chi", "roi_key": "putamen_L", "mean": values,
                         "site": ["A", "A", "B", "B", "B", "B"]})
    fig = figures.roi_plot_figure(long, atlas="aseg", mapname="chi", by="site", units="ppm")
    assert _offsets(fig) == ["", ""] and fig.axes[0].get_ylabel() == "χ (ppm)"
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert all(t.startswith("0.100") for t in labels if t), labels
    plt.close(fig)
    points = pd.DataFrame({"roi_key": "putamen_L", "value_first": values, "value_second": values[::-1]})
    row = {"ba_mean_diff": 0.0, "ba_loa_lower": -1e-4, "ba_loa_upper": 1e-4, "deming_intercept": 0.0,
           "deming_slope": 1.0, "pearson_r": -1.0}
    fig = figures.bland_altman_figure(points, row, units="(ppm)")
    assert not any(_offsets(fig))
    plt.close(fig)
    vol = np.full((6, 6, 6), lo, np.float32)
    vol[2:4] = hi
    fig = figures.mosaic_figure(vol, np.ones(3), vmin=lo, vmax=hi, cbar_label="χ (ppm)", n_slices=2)
    assert not any(_offsets(fig))
    plt.close(fig)


# ----------------------------------------------------------------------------- methods text

def test_citation_states_the_phase_units_each_acquisition_used(tmp_path):
    recs = [_record(), _record(subject="02"), _record(subject="03"), _record(subject="04")]
    _write_outputs(tmp_path, recs[0], qc_document(), chi=False)
    _write_outputs(tmp_path, recs[1], qc_document(), chi=False)
    # no QC file, the χ sidecar records the units (e.g. set on the command line)
    side = derivative_path(tmp_path, recs[2].entities, "Chimap", extension=".json")
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(json.dumps({"PhaseUnits": "radians", "PhaseUnitsSource": "--phase-units",
                                "PhaseRawRange": [-3.1416, 3.1415]}))
    md, _ = citation.write_citation(tmp_path, Config(), recs)
    text = md.read_text()
    assert ("The phase units used were int12 (auto-detected) for sub-01 (raw range 0 to 4095), sub-02 (raw range "
            "0 to 4095); radians (--phase-units) for sub-03 (raw range -3.142 to 3.142); not recorded for sub-04"
            in text)
    used = citation.phase_units_used(tmp_path, recs)
    assert used[0] == ("sub-01", "int12", "auto-detected", (0, 4095)) and used[3] == ("sub-04", None, None, None)
    many = [(f"sub-{i:02d}", "int12", "auto-detected", (0, 4090 + i)) for i in range(8)]
    assert citation.phase_units_sentence(many) == ("the phase units used were int12 (auto-detected) for 8 "
                                                   "acquisitions (raw values from 0 to 4097)")


def test_report_of_a_qc_file_made_by_the_qc_module(tmp_path):
    """The QC JSON as :mod:`qsmprep.qsm.qc` writes it ("<name>: <message>" warnings, n/a metrics)."""
    from qsmprep.qsm import qc

    metrics = {"phase_units": qc.metric("phase_units", "rescale"),
               "mask_volume_ml": qc.metric("mask_volume_ml", 1350.0),
               "mask_fraction_fov": qc.metric("mask_fraction_fov", 0.31),
               "field_residual_over_noise": qc.metric("field_residual_over_noise", None, why="fewer than three echoes"),
               "chi_range_ppm": qc.metric("chi_range_ppm", 0.21)}
    doc = qc.summarise(metrics)
    doc.update(PhaseUnits="rescale", PhaseUnitsSource="auto-detected", PhaseRawRange=[-2048, 2047])
    rec = _record()
    _write_outputs(tmp_path, rec, doc, chi=False)
    section = _qc_section(write_subject_report(tmp_path, "01", [rec], Config(), "run1").read_text())
    assert "<p class=\"warn\">No processing errors; 1 QC warning(s).</p>" in section
    assert section.count("the phase units were not recognised") == 2  # the warning list and the table row
    assert "<p class=\"warn\">1 warning(s):</p>" in section
    assert "<td class=\"t na\">n/a</td>" in section and "fewer than three echoes" in section
    assert "χ 1st–99th percentile range <code>chi_range_ppm</code></td><td>0.21 ppm</td>" in section
    assert "Phase units used: <b>rescale (auto-detected; raw range -2048 to 2047)</b>" in section


def test_mask_growth_rule():
    """Growth into the surface veins adds well under 1 % of the mask; above 5 % it has followed
    something else, and QC says so."""
    from qsmprep.qsm import qc

    assert qc.rate("mask_growth_added_fraction", 0.004) == ("pass", "")
    status, message = qc.rate("mask_growth_added_fraction", 0.08)
    assert status == "warn" and "8.0 %" in message and "grow_mm" in message

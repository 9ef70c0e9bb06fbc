"""Methods boilerplate and report helpers."""

import re

from qsmprep.bids import GreRecord
from qsmprep.config import Config
from qsmprep.reports import citation


def _record(**kw):
    base = dict(subject="01", session=None, acquisition=None, run=None, suffix="MEGRE",
                echo_times=[0.004, 0.012, 0.02], b0=3.0, magnitude=["m"], phase=["p"], t1w="t1w.nii.gz",
                shape=(96, 96, 64), voxel_size=(1.0, 1.0, 2.0))
    base.update(kw)
    return GreRecord(**base)


def test_boilerplate_follows_the_configuration():
    cfg = Config()
    cfg.update_workflow({"unwrapping": "romeo", "combination": "nonlinear", "background": "vsharp",
                         "inversion": {"method": "tv", "params": {"lambda_rule": "lcurve"}},
                         "reference": "csf", "phase_offset": "mcpc3ds", "denoise": "mppca"})
    cfg.anat.template, cfg.anat.atlases, cfg.anat.roi_erode = "MNI152NLin2009cAsym", ["HOSPA:th25"], 1
    text, keys = citation.methods_text(cfg, [_record(), _record(subject="02", t1w=None)])
    assert "2 participant(s) with 3-echo MEGRE data at 3 T (TE = 4, 12, 20 ms; voxel size 1 × 1 × 2 mm" in text
    assert "ROMEO" in text and "MCPC-3D-S" in text and "nonlinear complex-domain" in text
    assert "Marchenko-Pastur" in text and "patch_radius = 2" in text
    assert "V-SHARP" in text and "radius_max_mm = 12" in text
    assert "total-variation" in text and "L-curve corner" in text and "lambda = 0.0002" in text
    assert "ventricular CSF" in text and "MNI152NLin2009cAsym" in text and "HOSPA:th25" in text
    assert "after eroding each label by 1 voxel" in text
    for absent in ("Laplacian-based", "projection onto dipole", "MEDI", "segmentations"):
        assert absent not in text, absent
    assert keys[:1] == ["gorgolewski2011"] and {"dymerska2021", "liu2013nonlinear", "bilgic2014l1",
                                                "fonov2009", "straub2017", "eckstein2018", "veraart2016"} <= set(keys)
    # every reference mark points into the numbered list, every listed reference is cited
    marks = {int(m) for m in re.findall(r"\[(\d+)\]", text.split("## References")[0])}
    assert marks == set(range(1, len(keys) + 1))
    assert text.count("\n1. ") == 1 and f"\n{len(keys)}. " in text


def test_boilerplate_names_medis_solver():
    cfg = Config()
    text, keys = citation.methods_text(cfg, [_record(t1w=None)])
    assert "MEDI" in text and "ADMM" not in text and "milovic2018" not in keys
    cfg.update_workflow({"inversion": {"method": "medi", "params": {"solver": "admm"}}})
    text, keys = citation.methods_text(cfg, [_record(t1w=None)])
    assert "minimised by ADMM" in text and "solver = admm" in text and "milovic2018" in keys


def test_boilerplate_describes_the_masks_growth():
    cfg = Config()
    text, _ = citation.methods_text(cfg, [_record(t1w=None)])
    assert "quality of at least 0.5" in text and "within 3 mm" in text and "venous sinuses" in text
    cfg.update_workflow({"masking": {"method": "threshold", "params": {"grow_mm": 0, "grow_quality_threshold": 0.6}}})
    text, _ = citation.methods_text(cfg, [_record(t1w=None)])
    assert "venous sinuses" not in text and "removing voxels of low phase quality" in text
    cfg.update_workflow({"masking": {"method": "bet", "params": {"grow_mm": 2, "grow_quality_threshold": 0.6}}})
    text, _ = citation.methods_text(cfg, [_record(t1w=None)])
    assert "quality of at least 0.6" in text and "within 2 mm" in text


def test_boilerplate_without_t1w_or_rois_says_nothing_about_anatomy():
    cfg = Config()
    text, keys = citation.methods_text(cfg, [_record(t1w=None)])
    assert "**Anatomy.**" not in text and "avants2011" not in keys
    cfg.anat.coreg = True
    text, _ = citation.methods_text(cfg, [_record()])
    assert "registered to the T1w image" in text and "ROI statistics" not in text
    text, _ = citation.methods_text(cfg, [_record(magnitude=[], phase=[], real=["r"], imag=["i"])])
    assert "real and imaginary" in text and "scaled to radians" not in text


def test_every_boilerplate_reference_exists_and_formats():
    bib = citation.bibliography()
    for key, entry in citation.phrases().items():
        if key.startswith("_"):
            continue
        for ref in entry["cite"]:
            assert ref in bib, (key, ref)
    ref = citation.format_reference("blandaltman1986")
    assert ref.startswith("Bland JM, Altman DG (1986). Statistical methods for assessing agreement")
    assert "The Lancet 327(8476):307–310" in ref and "doi:10.1016/S0140-6736(86)90837-8" in ref


def test_citation_files_written(tmp_path):
    md, bib = citation.write_citation(tmp_path, Config(), [_record()])
    assert md == tmp_path / "logs" / "CITATION.md" and md.read_text().startswith("# Methods")
    entries = citation.parse_bibtex(bib.read_text())
    assert "liu2012medi" in entries and "zhou2014lbv" in entries and "liu2011pdf" not in entries


def test_subject_report_shows_failures_and_missing_outputs(tmp_path):
    from qsmprep.reports.subject import write_subject_report

    crash_dir = tmp_path / "sub-01" / "log" / "run1"
    crash_dir.mkdir(parents=True)
    (crash_dir / "crash-20261122-inversion.txt").write_text("Node: single_subject_01_wf.gre_wf.inversion\n"
                                                           "RuntimeError: <out of memory>\n")
    path = write_subject_report(tmp_path, "01", [_record()], Config(), "run1")
    html = path.read_text()
    assert path == tmp_path / "sub-01.html"
    assert "1 step(s) failed" in html and "crash-20261122-inversion.txt" in html
    assert "&lt;out of memory&gt;" in html and "No χ map was written" in html


def test_boilerplate_names_the_unringing():
    cfg = Config()
    text, keys = citation.methods_text(cfg, [_record(t1w=None)])
    assert "Gibbs ringing was removed" in text and "n_shifts = 20" in text
    assert {"kellner2016", "bautista2021"} <= set(keys)
    assert text.index("MEDI") < text.index("Gibbs ringing") < text.index("referenced to the mean")
    cfg.update_workflow({"unringing": "none"})
    text, keys = citation.methods_text(cfg, [_record(t1w=None)])
    assert "Gibbs" not in text and "kellner2016" not in keys

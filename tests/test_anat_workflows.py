"""Coregistration, template and ROI workflows: graphs, a small end-to-end run, full-size accuracy."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmprep.analysis.roi import read_roistats, roi_statistics
from qsmprep.workflows.anat import init_template_wf
from qsmprep.workflows.coreg import init_coreg_wf
from qsmprep.workflows.roi import atlas_label, find_segmentation, init_roi_wf
from test_registration import MOTION, t1w_labels
from test_templates import make_phantom_templateflow

ENTITIES = {"subject": "01"}


def _names(wf):
    return {n.fullname.split(".")[-1] for n in wf._get_all_nodes()}


def test_coreg_graph_and_options(tmp_path):
    wf = init_coreg_wf(omp_nthreads=2, output_dir=str(tmp_path), entities=ENTITIES)
    names = _names(wf)
    assert {"t1w_skullstrip", "coreg_gre2t1w", "chi_to_t1w", "r2star_to_t1w", "mask_to_t1w", "ds_xfm_gre2t1w",
            "ds_chi_t1w"} <= names
    assert wf.get_node("coreg_gre2t1w").interface.inputs.stages == ["rigid", "affine"]
    assert wf.get_node("mask_to_t1w").interface.inputs.interpolation == "nearestNeighbor"
    # the T1w brain extraction claims one core, so it runs beside the GRE's one-core steps
    strip = wf.get_node("t1w_skullstrip")
    assert strip.n_procs == strip.interface.inputs.num_threads == 1
    assert wf.get_node("coreg_gre2t1w").n_procs == 2
    assert "r2star_to_t1w" not in _names(init_coreg_wf(has_r2star=False))
    for bad in ({"brain_extraction": "bet"}, {"stages": ("syn",)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            init_coreg_wf(**bad)


def test_roi_graph_and_options():
    wf = init_roi_wf(atlas="HOSPA:th25", source="atlas", lateralize=True)
    assert wf.name == "roi_HOSPAth25_wf" and "lateralize" in _names(wf)
    assert atlas_label("aseg") == "aseg"
    with pytest.raises(ValueError, match="source"):
        init_roi_wf(atlas="x", source="template")
    with pytest.raises(ValueError, match="lateralize"):
        init_roi_wf(atlas="x", source="segmentation", lateralize=True)
    with pytest.raises(ValueError, match="erode_voxels"):
        init_roi_wf(atlas="x", erode_voxels=-1)


def test_find_segmentation(tmp_path):
    from qsmprep.errors import InputError

    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for name in ("sub-01_desc-aseg_dseg.nii.gz", "sub-01_desc-aparcaseg_dseg.nii.gz",
                 "sub-01_space-MNI152NLin2009cAsym_desc-aseg_dseg.nii.gz"):
        (anat / name).write_bytes(b"x")
    seg, lut = find_segmentation(tmp_path, "01")
    assert seg.endswith("sub-01_desc-aparcaseg_dseg.nii.gz") and lut.endswith("freesurfer_dseg.tsv")
    (tmp_path / "desc-aseg_dseg.tsv").write_text("index\tname\n17\tLeft-Hippocampus\n")
    seg, lut = find_segmentation(tmp_path, "01", desc="aseg")
    assert seg.endswith("sub-01_desc-aseg_dseg.nii.gz") and lut == str(tmp_path / "desc-aseg_dseg.tsv")
    with pytest.raises(InputError, match="sub-02"):
        find_segmentation(tmp_path, "02")


@pytest.fixture(scope="module")
def small_case(tmp_path_factory, small_phantom, small_gre):
    """GRE-space files of the small demo (truth χ/R2*/mask), a moved T1w and its segmentation."""
    from qsmprep.demo import render_t1w

    root = tmp_path_factory.mktemp("anatwf")
    ph = small_phantom
    sig, _ = small_gre
    files = {"root": root}
    for name, data in (("average", np.sqrt((np.abs(sig) ** 2).mean(-1)).astype(np.float32)),
                       ("chi", ph.chi), ("r2star", ph.r2star), ("mask", ph.brain_mask.astype(np.uint8)),
                       ("labels", ph.labels.astype(np.int16))):
        files[name] = str(root / f"gre_{name}.nii.gz")
        nib.Nifti1Image(data, ph.affine).to_filename(files[name])
    t1w = render_t1w("small", seed=0, t1w_motion=MOTION)
    files["t1w"] = str(root / "t1w.nii.gz")
    t1w.to_filename(files["t1w"])
    seg_dir = root / "segmentations" / "sub-01" / "anat"
    seg_dir.mkdir(parents=True)
    nib.Nifti1Image(t1w_labels("small", 0, MOTION, t1w.affine, t1w.shape).astype(np.int16),
                    t1w.affine).to_filename(seg_dir / "sub-01_desc-phantom_dseg.nii.gz")
    lut = "index\tname\themisphere\n" + "".join(f"{k}\t{v[0]}\t{v[1] or 'n/a'}\n" for k, v in ph.lut.items())
    (seg_dir / "sub-01_desc-phantom_dseg.tsv").write_text(lut)
    files["seg_dir"] = str(root / "segmentations")
    files["lut"] = str(seg_dir / "sub-01_desc-phantom_dseg.tsv")
    return files


def _run(wf, base_dir):
    wf.base_dir = str(base_dir)
    return wf.run(plugin="Linear")


def _result(graph, name, field):
    node = next(n for n in graph.nodes() if n.fullname.endswith(name))
    return getattr(node.result.outputs, field)


def test_coreg_and_roi_workflows_run_on_the_small_demo(small_case, tmp_path):
    """Segmentation in the moved T1w → GRE: ROI means within 0.01 ppm of the true labels' (3 mm)."""
    from nipype.pipeline import engine as pe

    from qsmprep.demo import DEEP_GREY_LABELS

    out = tmp_path / "derivatives"
    seg, lut = find_segmentation(small_case["seg_dir"], "01")
    top = pe.Workflow(name="top")
    # one ITK thread: multi-threaded antsRegistration is not reproducible from run to run
    # (antspyx's own deterministic mode is the same setting), and at 3 mm a sub-voxel change
    # of the transform moves the thin nuclei's labels by a voxel (seen: up to 0.11 ppm)
    coreg = init_coreg_wf(omp_nthreads=1, output_dir=str(out), entities=ENTITIES, sources=["bids:raw:x"])
    coreg.inputs.inputnode.t1w = small_case["t1w"]
    for field in ("average", "mask", "chi", "r2star"):
        setattr(coreg.inputs.inputnode, field, small_case[field])
    roi = init_roi_wf(atlas="phantom", source="segmentation", erode_voxels=1, output_dir=str(out), entities=ENTITIES)
    roi.inputs.inputnode.labels, roi.inputs.inputnode.lut = seg, lut
    roi.inputs.inputnode.chi_info = {"ReferenceRegion": "whole brain"}
    truth = init_roi_wf(atlas="truth", source="labels", erode_voxels=1, output_dir=str(out), entities=ENTITIES)
    truth.inputs.inputnode.labels, truth.inputs.inputnode.lut = small_case["labels"], lut
    for wf in (roi, truth):
        for field in ("chi", "r2star", "mask"):
            setattr(wf.inputs.inputnode, field, small_case[field])
    top.connect([(coreg, roi, [("outputnode.xfm_t1w2gre", "inputnode.xfm_t1w2gre")])])
    top.add_nodes([truth])
    _run(top, tmp_path / "work")

    anat = out / "sub-01" / "anat"
    for name in ("sub-01_from-GRE_to-T1w_mode-image_xfm.mat", "sub-01_from-T1w_to-GRE_mode-image_xfm.mat",
                 "sub-01_space-T1w_Chimap.nii.gz", "sub-01_space-T1w_R2starmap.nii.gz",
                 "sub-01_space-T1w_desc-brain_mask.nii.gz", "sub-01_desc-phantom_dseg.nii.gz",
                 "sub-01_desc-phantom_roistats.tsv", "sub-01_desc-phantom_roistats.json",
                 "sub-01_desc-truth_roistats.tsv"):
        assert (anat / name).is_file(), name
    chi_t1w = nib.load(anat / "sub-01_space-T1w_Chimap.nii.gz")
    assert chi_t1w.shape == nib.load(small_case["t1w"]).shape
    side = json.loads((anat / "sub-01_space-T1w_Chimap.json").read_text())
    assert side["Units"] == "ppm" and "antsRegistration" in side["Registration"]
    info = json.loads((anat / "sub-01_desc-phantom_roistats.json").read_text())
    assert info["LabelSource"] == "segmentation" and info["ReferenceRegion"] == "whole brain"
    assert info["Transforms"] == ["from-T1w_to-GRE_mode-image_xfm.mat"]

    got = {(r["label"], r["map"]): r for r in read_roistats(anat / "sub-01_desc-phantom_roistats.tsv")}
    want = {(r["label"], r["map"]): r for r in read_roistats(anat / "sub-01_desc-truth_roistats.tsv")}
    errors = np.array([got[(lab, "chi")]["mean"] - want[(lab, "chi")]["mean"] for lab in DEEP_GREY_LABELS])
    interior = np.array([got[(lab, "chi")]["eroded"] == 1 and want[(lab, "chi")]["eroded"] == 1
                         for lab in DEEP_GREY_LABELS])
    print("small demo, deep-grey chi error through registration (ppm):", np.round(errors, 4), interior)
    # nuclei thick enough to erode at 3 mm: their interiors match the truth labels' exactly
    assert interior.sum() >= 6 and np.abs(errors[interior]).max() < 0.005
    # the thin ones (pallidum, red nucleus, nigra: 1-2 voxels at 3 mm) are all partial volume;
    # they are only bounded by the tissue contrast here (the 1 mm acceptance test covers them)
    assert np.abs(errors).max() < 0.1
    assert got[(13, "r2star")]["roi"] == "putamen" and got[(13, "r2star")]["units"] == "1/s"


@pytest.mark.full
def test_full_demo_roi_means_through_registration(tmp_path, full_phantom, full_gre):
    """Acceptance: full demo, T1w moved by 6° and 4 mm; deep-grey means within 0.005 ppm of the truth labels'."""
    from qsmprep.demo import DEEP_GREY_LABELS, render_t1w
    from qsmprep.anat import (
        apply_transforms, brain_extract_t1w, read_affine, register, rigid_error, write_dilated_mask,
    )
    from test_registration import BRAIN_BOX, true_t1w_to_gre

    ph = full_phantom
    sig, _ = full_gre
    avg = str(tmp_path / "avg.nii.gz")
    nib.Nifti1Image(np.sqrt((np.abs(sig) ** 2).mean(-1)).astype(np.float32), ph.affine).to_filename(avg)
    t1w = render_t1w("full", seed=0, t1w_motion=MOTION)
    t1w.to_filename(tmp_path / "t1w.nii.gz")
    nib.Nifti1Image(t1w_labels("full", 0, MOTION, t1w.affine, t1w.shape).astype(np.int16),
                    t1w.affine).to_filename(tmp_path / "t1w_labels.nii.gz")
    be = brain_extract_t1w(tmp_path / "t1w.nii.gz", tmp_path / "be", num_threads=2)
    write_dilated_mask(be["mask"], tmp_path / "mask_dil.nii.gz", 4.0)
    reg = register(be["corrected"], avg, tmp_path / "reg_", stages=("rigid", "affine"),
                   fixed_mask=tmp_path / "mask_dil.nii.gz", num_threads=2)
    est = read_affine(reg["forward"][0])
    angle, trans = rigid_error(est, true_t1w_to_gre(MOTION))
    worst = rigid_error(est, true_t1w_to_gre(MOTION), BRAIN_BOX)[1]
    lab = apply_transforms(tmp_path / "t1w_labels.nii.gz", avg, [(reg["forward"][0], True)], tmp_path / "lab.nii.gz",
                           interpolation="nearestNeighbor", dtype=np.int16)
    lab = np.asarray(nib.load(lab).dataobj)
    result = {}
    for erode in (0, 1):
        kw = dict(voxel_size=ph.voxel_size, mask=ph.brain_mask, erode_voxels=erode, include=DEEP_GREY_LABELS)
        a = roi_statistics({"chi": ph.chi}, lab, **kw)
        b = roi_statistics({"chi": ph.chi}, ph.labels, **kw)
        result[erode] = np.array([x["mean"] - y["mean"] for x, y in zip(a, b)])
    print(f"full demo: rotation error {angle:.3f} deg, translation {trans:.3f} mm, brain box {worst:.3f} mm; "
          f"max |ROI error| {np.abs(result[0]).max():.4f} ppm (no erosion), {np.abs(result[1]).max():.4f} ppm "
          "(labels eroded by 1 voxel)")
    assert angle < 1.0 and trans < 1.0
    assert np.abs(result[1]).max() < 0.005


def test_template_and_atlas_workflows_run_offline(small_case, small_phantom, tmp_path, monkeypatch):
    """A phantom TemplateFlow template (another demo subject) and its atlas, T1w → template SyN."""
    from nipype.pipeline import engine as pe

    from qsmprep import templates
    from qsmprep.demo import BRAIN_LABELS, DEEP_GREY_LABELS, render_t1w

    tpl_img = render_t1w("small", seed=1)   # another subject: other pose, other χ
    tpl_labels = t1w_labels("small", 1, None, tpl_img.affine, tpl_img.shape)
    brain = np.isin(tpl_labels, BRAIN_LABELS)
    home = tmp_path / "templateflow"
    lut = "index\tname\themisphere\n" + "".join(f"{k}\tlabel{k}\tn/a\n" for k in DEEP_GREY_LABELS)
    make_phantom_templateflow(
        home, t1w=tpl_img, mask=nib.Nifti1Image(brain.astype(np.uint8), tpl_img.affine),
        labels=nib.Nifti1Image(np.where(np.isin(tpl_labels, DEEP_GREY_LABELS), tpl_labels, 0).astype(np.int16),
                               tpl_img.affine), lut=lut,
    )
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("QSMPREP_OFFLINE", "1")
    tpl = templates.get_template("Phantom")
    atlas = templates.get_atlas("Phantom", "Phantom")

    out = tmp_path / "derivatives"
    top = pe.Workflow(name="top")
    coreg = init_coreg_wf(omp_nthreads=2)
    coreg.inputs.inputnode.t1w = small_case["t1w"]
    for field in ("average", "mask", "chi", "r2star"):
        setattr(coreg.inputs.inputnode, field, small_case[field])
    anat = init_template_wf(template="Phantom", template_files=tpl, sloppy=True, omp_nthreads=2,
                            output_dir=str(out), entities=ENTITIES)
    anat.inputs.inputnode.chi = small_case["chi"]
    anat.inputs.inputnode.chi_info = {"ReferenceRegion": "whole brain"}
    roi = init_roi_wf(atlas="Phantom", source="atlas", erode_voxels=1, output_dir=str(out), entities=ENTITIES)
    roi.inputs.inputnode.labels, roi.inputs.inputnode.lut = atlas["dseg"], atlas["lut"]
    for field in ("chi", "r2star", "mask"):
        setattr(roi.inputs.inputnode, field, small_case[field])
    top.connect([
        (coreg, anat, [("outputnode.t1w_brain", "inputnode.t1w_brain"), ("outputnode.t1w_mask", "inputnode.t1w_mask"),
                       ("outputnode.xfm_gre2t1w", "inputnode.xfm_gre2t1w")]),
        (coreg, roi, [("outputnode.xfm_t1w2gre", "inputnode.xfm_t1w2gre")]),
        (anat, roi, [("outputnode.xfm_tpl2t1w", "inputnode.xfm_tpl2t1w")]),
    ])
    _run(top, tmp_path / "work")

    d = out / "sub-01" / "anat"
    for name in ("sub-01_space-Phantom_Chimap.nii.gz", "sub-01_from-T1w_to-Phantom_mode-image_xfm.h5",
                 "sub-01_from-Phantom_to-T1w_mode-image_xfm.h5", "sub-01_desc-Phantom_roistats.tsv"):
        assert (d / name).is_file(), name
    assert nib.load(d / "sub-01_space-Phantom_Chimap.nii.gz").shape == tpl_img.shape
    info = json.loads((d / "sub-01_desc-Phantom_roistats.json").read_text())
    assert info["LabelSource"] == "atlas" and len(info["Transforms"]) == 2
    assert info["Transforms"][0].endswith(".h5") and info["Transforms"][1] == "from-T1w_to-GRE_mode-image_xfm.mat"
    # atlas labels through SyN + coregistration land on the subject's nuclei: eroded interiors give
    # the subject's true χ of each nucleus (the atlas subject's own χ differs by up to ±10 %)
    rows = {r["label"]: r for r in read_roistats(d / "sub-01_desc-Phantom_roistats.tsv") if r["map"] == "chi"}
    chi_true = {k: v[2] for k, v in small_phantom.lut.items()}
    big = [lab for lab in (11, 12, 13, 14, 17, 18) if rows[lab]["eroded"] == 1]
    errs = [rows[lab]["mean"] - chi_true[lab] for lab in big]
    print("atlas route, eroded deep-grey chi error (ppm):", dict(zip(big, np.round(errs, 4))))
    assert len(big) >= 4 and np.abs(errs).max() < 0.01


"""Sub-command ``qsmprep demo``: write the phantom dataset, process it, compare χ with the truth."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

from qsmprep.cli.checks import check_writable
from qsmprep.cli.errors import _CRASH_DIRS
from qsmprep.cli.run import run_participant


def run_demo(opts):
    """Write the demo dataset, process it, and compare χ with the phantom truth."""
    import nibabel as nib
    import numpy as np

    from qsmprep.analysis.validation import compare_roi_means, format_comparison
    from qsmprep.bids import derivative_path
    from qsmprep.config import Config, load_preset
    from qsmprep.demo import DEEP_GREY_LABELS, label_name, write_demo_dataset

    from qsmprep.cli.progress import PROGRESS_LOGGER

    out = Path(opts.out_dir).absolute()
    check_writable(out, "demo folder")
    _CRASH_DIRS[:] = [out]
    PROGRESS_LOGGER.info("Writing the %s demo dataset (%d participants) to %s", opts.size, opts.subjects,
                         out / "bids")
    info = write_demo_dataset(out, size=opts.size, n_subjects=opts.subjects, overwrite=opts.overwrite,
                              longitudinal=getattr(opts, "longitudinal", True))
    if opts.overwrite:  # a replaced demo must not reuse the previous demo's work or outputs
        import shutil

        for sub in ("work", "derivatives", "tubes"):
            shutil.rmtree(out / sub, ignore_errors=True)
    config = Config()
    ex = config.execution
    ex.bids_dir, ex.output_dir, ex.work_dir = str(out / "bids"), str(out / "derivatives" / "qsmprep"), str(out / "work")
    ex.nprocs, ex.verbosity = opts.nprocs, opts.verbosity
    ex.run_uuid = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"
    # ROI tables from the phantom's T1w-space segmentation, through the GRE→T1w registration
    # (labels eroded by one voxel: the demo's 3 mm voxels are mostly partial volume at edges)
    config.anat.segmentation_dir = info["segmentation_dir"]
    config.anat.roi_erode = 1
    # lesion tables from the phantom's T1w-space lesion masks (MS lesions, haemorrhage,
    # cavernous malformation, calcification), tissue from its segmentation
    config.anat.lesion_dir = info["lesion_dir"]
    if opts.config:
        config.update_workflow(load_preset(opts.config), source=str(opts.config))
    chisep = config.workflow.stages["chi_separation"].method == "chisep"
    if getattr(opts, "r2_map", False):
        if not chisep:
            from qsmprep.errors import InputError

            raise InputError("--r2-map is for chi-separation: give a --config preset with "
                             "{\"workflow\": {\"chi_separation\": \"chisep\"}}")
        ex.r2_dir = info["r2_dir"]
    records = run_participant(config)

    names = {lab: label_name(lab) for lab in DEEP_GREY_LABELS}
    lines = ["", f"qsmprep demo finished. BIDS input: {ex.bids_dir}", f"Derivatives: {ex.output_dir}",
             f"Ground truth: {out / 'truth'}"]
    for rec in records:
        chi_path = derivative_path(ex.output_dir, rec.entities, "Chimap")
        chi_img = nib.load(chi_path)
        chi = np.asarray(chi_img.dataobj, dtype=np.float32)
        mask = chi != 0
        stem = f"sub-{rec.subject}" + (f"_ses-{rec.session}" if rec.session else "")
        truth_files = info["subjects"][stem[4:]]
        chi_true = np.asarray(nib.load(truth_files["Chimap"]).dataobj, dtype=np.float32)
        labels = np.asarray(nib.load(truth_files["dseg"]).dataobj).astype(int)
        result = compare_roi_means(chi, chi_true, labels, mask, DEEP_GREY_LABELS)
        lines += ["", f"{rec.prefix}: {chi_path}", format_comparison(result, names)]
        if chisep:
            lines += _chisep_lines(ex.output_dir, rec, truth_files, labels)
        roi_table = derivative_path(ex.output_dir, rec.entities, "roistats", desc="phantom", extension=".tsv")
        if Path(roi_table).is_file():
            lines.append(f"ROI table (segmentation through the GRE→T1w registration): {roi_table}")
        lesion_table = derivative_path(ex.output_dir, rec.entities, "lesionstats", desc="lesions", extension=".tsv")
        if Path(lesion_table).is_file():
            lines.append(f"Lesion table (relative chi against normal-appearing tissue): {lesion_table}")
    from qsmprep.reports.group import run_group

    gdir = run_group(ex.bids_dir, ex.output_dir)
    from qsmprep.demo.tubes import write_tube_dataset

    tubes = write_tube_dataset(out / "tubes")  # the calibration phantom: not processed here
    lines += ["", f"Tube phantom for calibration (gadolinium 0-5 mM, {tubes['molar_chi']} ppm/mM): qsmprep calibrate "
              f"{tubes['bids_dir']} {out / 'tubes' / 'derivatives'} --tubes {tubes['tubes']} --reference-slope "
              f"{tubes['molar_chi']}"]
    lines += ["", f"Reports: {', '.join(str(Path(ex.output_dir) / f'sub-{s}.html') for s in sorted({r.subject for r in records}))}",
              f"Methods boilerplate: {Path(ex.output_dir) / 'logs' / 'CITATION.md'}",
              f"Group level (qsmprep ... group): {gdir / 'group.html'}"]
    print("\n".join(lines))  # the demo's report to the user, on stdout by design
    return 0


def _chisep_lines(output_dir, rec, truth_files, labels):
    """χ⁺ and χ⁻ against the phantom's truth in the deep grey nuclei and the χ-separation structures."""
    import nibabel as nib
    import numpy as np

    from qsmprep.bids import derivative_path
    from qsmprep.demo import DEEP_GREY_LABELS, LESION_LABELS, label_name

    def read(path):
        return np.asarray(nib.load(path).dataobj, dtype=np.float32)

    rows = ["chi-separation (ppm, estimate / truth):", f"  {'region':24s} {'chi+':>17s} {'chi-':>17s}"]
    est = {d: read(derivative_path(output_dir, rec.entities, "Chimap", desc=d)) for d in ("paramagnetic", "diamagnetic")}
    true = {d: read(truth_files[f"desc-{d}_Chimap"]) for d in est}
    valid = est["paramagnetic"] != 0
    valid |= est["diamagnetic"] != 0
    for lab in [*DEEP_GREY_LABELS, 31, *LESION_LABELS]:
        sel = valid & (labels == lab)
        if sel.sum() < 3:
            continue
        cells = [f"{est[d][sel].mean():8.4f}/{true[d][sel].mean():8.4f}" for d in est]
        rows.append(f"  {label_name(lab):24s} {cells[0]:>17s} {cells[1]:>17s}")
    return rows

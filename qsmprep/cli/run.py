"""Entry point ``qsmprep``: parse, validate inputs, build the workflow, run it."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from qsmprep import __version__
from qsmprep.cli.parser import get_demo_parser, get_parser
from qsmprep.errors import InputError

LOGGER = logging.getLogger("nipype.workflow")


class ProcessingError(RuntimeError):
    """A node failed for a reason that is not an input problem (see the crash reports)."""


def _setup_logging(verbosity):
    level = {0: logging.INFO, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    from nipype import config as ncfg
    from nipype import logging as nlogging

    ncfg.update_config({"logging": {"workflow_level": logging.getLevelName(level),
                                    "interface_level": "WARNING" if verbosity < 2 else "DEBUG",
                                    "utils_level": "WARNING" if verbosity < 2 else "DEBUG"}})
    nlogging.update_logging(ncfg)
    # a handler left writing to a closed stream (an earlier in-process call whose stderr was
    # replaced, e.g. under a test runner) would turn every log line into a traceback
    for name in ("nipype", "nipype.workflow", "nipype.interface", "nipype.utils", ""):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                handler.stream = sys.stderr  # (setStream would flush the closed stream)


def _is_within(path, parent):
    try:
        Path(path).resolve().relative_to(Path(parent).resolve())
        return True
    except ValueError:
        return False


def check_paths(bids_dir, output_dir, work_dir):
    """Refuse layouts that would write into the input dataset."""
    bids_dir, output_dir, work_dir = (Path(p).absolute() for p in (bids_dir, output_dir, work_dir))
    if output_dir.resolve() == bids_dir.resolve():
        raise InputError("output_dir must not be the BIDS dataset itself", path=output_dir)
    if _is_within(output_dir, bids_dir) and not _is_within(output_dir, bids_dir / "derivatives"):
        raise InputError("output_dir inside the BIDS dataset must be under its derivatives/ folder",
                         path=output_dir)
    if _is_within(work_dir, bids_dir):
        raise InputError("the work directory must not be inside the BIDS dataset", path=work_dir)
    if _is_within(bids_dir, output_dir) or _is_within(bids_dir, work_dir):
        raise InputError("the BIDS dataset must not be inside the output or work directory", path=bids_dir)


def write_dataset_description(output_dir, config):
    """``dataset_description.json`` of the derivatives, with the resolved configuration."""
    from qsmprep.interfaces.derivatives import write_json

    desc = {
        "Name": "qsmprep derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "qsmprep",
            "Version": __version__,
            "Configuration": config.to_dict()["workflow"],
        }],
        "DatasetLinks": {"raw": Path(config.execution.bids_dir).absolute().as_uri()},
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(output_dir) / "dataset_description.json", desc)


def build_config(opts):
    from qsmprep.config import Config, load_preset

    config = Config()
    ex = config.execution
    ex.bids_dir = str(Path(opts.bids_dir).absolute())
    ex.output_dir = str(Path(opts.output_dir).absolute())
    ex.work_dir = str(Path(opts.work_dir or Path.cwd() / "work").absolute())
    ex.participant_label = opts.participant_label
    ex.session_label = opts.session_label
    ex.nprocs = opts.nprocs
    ex.mem_gb = opts.mem_gb
    ex.plugin = opts.plugin
    from qsmprep.cli.slurm import load_plugin_args

    ex.plugin_args = load_plugin_args(getattr(opts, "plugin_args", None))
    if ex.plugin_args and ex.plugin not in ("SLURM", "SLURMGraph"):
        raise InputError(f"--plugin-args is for --plugin SLURM or SLURMGraph, not {ex.plugin}")
    ex.skip_bids_validation = opts.skip_bids_validation
    ex.b0 = opts.b0
    ex.verbosity = opts.verbosity
    ex.run_uuid = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"
    anat = config.anat
    anat.coreg = getattr(opts, "coreg", True)
    anat.template = None if str(getattr(opts, "template", "none")).lower() == "none" else opts.template
    anat.atlases = list(getattr(opts, "atlas", []) or [])
    anat.segmentation_dir = str(Path(opts.segmentation_dir).absolute()) if getattr(opts, "segmentation_dir", None) else None
    anat.roi_erode = int(getattr(opts, "roi_erode", 0))
    anat.sloppy = bool(getattr(opts, "sloppy", False))
    if anat.roi_erode < 0:
        raise InputError(f"--roi-erode must be ≥ 0, got {anat.roi_erode}")
    if anat.atlases and not anat.template:
        raise InputError("--atlas needs --template (atlases live in a template space)")
    if (anat.template or anat.atlases or anat.segmentation_dir) and not anat.coreg:
        raise InputError("--template/--atlas/--segmentation-dir need the GRE→T1w registration; drop --no-coreg")
    if opts.config:
        config.update_workflow(load_preset(opts.config), source=str(opts.config))
    return config


def _input_errors_from_crashes(crash_dirs):
    """InputError messages found in Nipype crash files (raised inside nodes)."""
    found = []
    for folder in crash_dirs:
        for crash in sorted(Path(folder).glob("crash-*.txt")):
            for line in crash.read_text(errors="replace").splitlines():
                if "InputError:" in line:
                    msg = line.split("InputError:", 1)[1].strip()
                    if msg and msg not in found:
                        found.append(msg)
    return found


def run_participant(config):
    """Validate inputs, build and run the participant-level workflow."""
    from nipype import config as ncfg

    from qsmprep.bids import collect_gre, derivative_path
    from qsmprep.workflows.base import init_qsmprep_wf

    ex = config.execution
    check_paths(ex.bids_dir, ex.output_dir, ex.work_dir)
    records = collect_gre(
        ex.bids_dir, participant_label=ex.participant_label, session_label=ex.session_label,
        validate=not ex.skip_bids_validation, b0=ex.b0,
    )
    subjects = sorted({r.subject for r in records})
    LOGGER.info("qsmprep %s: %d acquisition(s) of %d participant(s): %s", __version__, len(records),
                len(subjects), ", ".join(f"sub-{s}" for s in subjects))

    Path(ex.work_dir).mkdir(parents=True, exist_ok=True)
    crash_dirs = [Path(ex.output_dir) / f"sub-{s}" / "log" / ex.run_uuid for s in subjects]
    for folder in crash_dirs:
        folder.mkdir(parents=True, exist_ok=True)
        config.to_json(folder / "qsmprep.json")
    config.to_json(Path(ex.work_dir) / f"config-{ex.run_uuid}.json")

    ncfg.update_config({"execution": {
        "hash_method": "content", "crashfile_format": "txt", "remove_unnecessary_outputs": False,
        "stop_on_first_crash": False, "parameterize_dirs": False, "check_version": False,
    }})
    workflow = init_qsmprep_wf(config, records)
    workflow.base_dir = ex.work_dir
    workflow.config["execution"].update({"crashdump_dir": str(Path(ex.output_dir) / "log" / ex.run_uuid),
                                         "crashfile_format": "txt", "hash_method": "content"})
    from qsmprep.cli.progress import ProgressReporter, count_steps

    progress = ProgressReporter(count_steps(workflow))
    plugin_args = {"n_procs": ex.nprocs, "raise_insufficient": False, "status_callback": progress}
    if ex.mem_gb:
        plugin_args["memory_gb"] = ex.mem_gb
    write_dataset_description(ex.output_dir, config)
    try:
        if ex.plugin == "Linear":
            workflow.run(plugin="Linear", plugin_args={"status_callback": progress})
        elif ex.plugin in ("SLURM", "SLURMGraph"):
            from qsmprep.cli.slurm import slurm_plugin, wait_for_jobs

            name, args = slurm_plugin(workflow, ex.plugin, ex.plugin_args or {})
            workflow.run(plugin=name, plugin_args={**args, "status_callback": progress})
            if ex.plugin == "SLURMGraph" and (ex.plugin_args or {}).get("wait", True):
                LOGGER.info("SLURMGraph: all steps submitted; waiting for the jobs to leave the queue")
                wait_for_jobs(Path(ex.work_dir) / workflow.name / "batch")
                missing = [r.prefix for r in records if not derivative_path(ex.output_dir, r.entities, "Chimap").is_file()]
                if missing:
                    raise RuntimeError(f"SLURM jobs ended without the χ maps of {', '.join(missing)}")
        else:
            workflow.run(plugin="MultiProc", plugin_args=plugin_args)
    except RuntimeError as exc:
        problems = _input_errors_from_crashes(crash_dirs)
        if problems:
            raise InputError("; ".join(problems)) from exc
        raise ProcessingError(
            f"processing failed ({str(exc).rstrip('.')}); crash reports are in "
            + ", ".join(str(d) for d in crash_dirs)
        ) from exc
    finally:
        write_dataset_description(ex.output_dir, config)
        write_reports(config, records, subjects)
    return records


def write_reports(config, records, subjects):
    """Participant reports (``sub-<L>.html``) and the methods boilerplate; never raises."""
    from qsmprep.reports.citation import write_citation
    from qsmprep.reports.subject import write_subject_report

    ex = config.execution
    try:
        write_citation(ex.output_dir, config, records)
    except Exception as exc:  # noqa: BLE001 - reporting must not hide the run's own outcome
        LOGGER.warning("could not write the methods boilerplate: %s", exc)
    for sub in subjects:
        try:
            path = write_subject_report(ex.output_dir, sub, [r for r in records if r.subject == sub], config,
                                        ex.run_uuid)
            LOGGER.info("report: %s", path)
        except Exception as exc:  # noqa: BLE001
            LOGGER.warning("could not write the report of sub-%s: %s", sub, exc)


def run_demo(opts):
    """Write the demo dataset, process it, and compare χ with the phantom truth."""
    import nibabel as nib
    import numpy as np

    from qsmprep.analysis.validation import compare_roi_means, format_comparison
    from qsmprep.bids import derivative_path
    from qsmprep.config import Config, load_preset
    from qsmprep.demo import DEEP_GREY_LABELS, label_name, write_demo_dataset

    out = Path(opts.out_dir).absolute()
    LOGGER.info("Writing the %s demo dataset (%d participants) to %s", opts.size, opts.subjects, out / "bids")
    info = write_demo_dataset(out, size=opts.size, n_subjects=opts.subjects, overwrite=opts.overwrite)
    if opts.overwrite:  # a replaced demo must not reuse the previous demo's work or outputs
        import shutil

        for sub in ("work", "derivatives"):
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
    if opts.config:
        config.update_workflow(load_preset(opts.config), source=str(opts.config))
    records = run_participant(config)

    names = {lab: label_name(lab) for lab in DEEP_GREY_LABELS}
    lines = ["", f"qsmprep demo finished. BIDS input: {ex.bids_dir}", f"Derivatives: {ex.output_dir}",
             f"Ground truth: {out / 'truth'}"]
    for rec in records:
        chi_path = derivative_path(ex.output_dir, rec.entities, "Chimap")
        chi_img = nib.load(chi_path)
        chi = np.asarray(chi_img.dataobj, dtype=np.float32)
        mask = chi != 0
        truth_dir = Path(info["truth_dir"]) / f"sub-{rec.subject}"
        chi_true = np.asarray(nib.load(truth_dir / f"sub-{rec.subject}_Chimap.nii.gz").dataobj, dtype=np.float32)
        labels = np.asarray(nib.load(truth_dir / f"sub-{rec.subject}_dseg.nii.gz").dataobj).astype(int)
        result = compare_roi_means(chi, chi_true, labels, mask, DEEP_GREY_LABELS)
        lines += ["", f"{rec.prefix}: {chi_path}", format_comparison(result, names)]
        roi_table = derivative_path(ex.output_dir, rec.entities, "roistats", desc="phantom", extension=".tsv")
        if Path(roi_table).is_file():
            lines.append(f"ROI table (segmentation through the GRE→T1w registration): {roi_table}")
    from qsmprep.reports.group import run_group

    gdir = run_group(ex.bids_dir, ex.output_dir)
    lines += ["", f"Reports: {', '.join(str(Path(ex.output_dir) / f'sub-{s}.html') for s in sorted({r.subject for r in records}))}",
              f"Methods boilerplate: {Path(ex.output_dir) / 'logs' / 'CITATION.md'}",
              f"Group level (qsmprep ... group): {gdir / 'group.html'}"]
    print("\n".join(lines))  # the demo's report to the user, on stdout by design
    return 0


def main(argv=None):
    """Console script ``qsmprep``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        if argv and argv[0] == "prefetch":
            from qsmprep.templates import main_prefetch

            return main_prefetch(argv[1:])
        if argv and argv[0] == "slurm-script":
            from qsmprep.cli.slurm import main_slurm_script

            return main_slurm_script(argv[1:])
        if argv and argv[0] == "demo":
            opts = get_demo_parser().parse_args(argv[1:])
            _setup_logging(opts.verbosity)
            return run_demo(opts)
        opts = get_parser().parse_args(argv)
        _setup_logging(opts.verbosity)
        if opts.analysis_level == "group":
            from qsmprep.reports.group import run_group

            check_paths(opts.bids_dir, opts.output_dir, opts.work_dir or Path.cwd() / "work")
            gdir = run_group(opts.bids_dir, opts.output_dir, opts.participant_label)
            print(f"qsmprep group level finished; tables and report in {gdir}")
            return 0
        config = build_config(opts)
        records = run_participant(config)
        print(f"qsmprep finished {len(records)} acquisition(s); derivatives in {config.execution.output_dir}")
        return 0
    except InputError as exc:
        print(f"qsmprep: error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"qsmprep: error: {exc}", file=sys.stderr)
        return 2
    except ProcessingError as exc:
        print(f"qsmprep: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

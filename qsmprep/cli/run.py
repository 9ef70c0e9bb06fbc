"""Entry point ``qsmprep``: parse, validate inputs, build the workflow, run it.

The checks before a run are in :mod:`qsmprep.cli.checks`, the error kinds and crash-file
helpers in :mod:`qsmprep.cli.errors`, the logging set-up in :mod:`qsmprep.cli.logs` and the
``demo`` sub-command in :mod:`qsmprep.cli.demo`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

from qsmprep import __version__
from qsmprep.cli.checks import _remove_empty, check_inputs, check_paths, check_writable
from qsmprep.cli.errors import (
    _CRASH_DIRS,
    EnvironmentProblem,
    ProcessingError,
    _environment_errors_from_crashes,
    _input_errors_from_crashes,
    _one_line,
    _write_crash,
    describe_oserror,
)
from qsmprep.cli.logs import _setup_logging
from qsmprep.cli.parser import get_demo_parser, get_parser
from qsmprep.errors import InputError

LOGGER = logging.getLogger("nipype.workflow")


#: Lines of the derivatives' ``.bidsignore``: what the BIDS validator should not hold to BIDS
#: names.  First what is not BIDS data at all: reports, figures, logs, the DICOM export, the QC
#: metrics (a JSON file without an image), the group level's tables.
BIDSIGNORE = ("*.html", "sub-*/figures", "sub-*/log", "logs", "sub-*/dicom", "sub-*/ses-*/dicom",
              "*_desc-qc_metrics.json", "group")
#: Then the outputs whose names DESIGN.md fixes but BIDS (1.9, the validator's schema) has no rule
#: for: a ppm field map and a T2*-weighted echo average in ``anat/`` (``fieldmap`` and
#: ``magnitude`` are fmap suffixes, whose rules want Hz/rad/s/T and a magnitude partner), R2′,
#: the ROI and lesion tables, and the transforms (no ``_xfm`` rule yet).  Every other output
#: is held to BIDS; ``tests/test_bids_validator.py`` checks that each line here is needed.
BIDSIGNORE_NONSTANDARD = ("*_desc-totalfield_fieldmap.*", "*_desc-localfield_fieldmap.*",
                          "*_desc-echoaverage_magnitude.*", "*_desc-echoaveragebrain_magnitude.*",
                          "*_R2primemap.*", "*_roistats.*", "*_lesionstats.*", "*_xfm.*")


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
    # an existing .bidsignore keeps the user's lines and gains the ones it lacks
    ignore = Path(output_dir) / ".bidsignore"
    have = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [line for line in BIDSIGNORE + BIDSIGNORE_NONSTANDARD if line not in have]
    if missing:
        from qsmprep.interfaces.derivatives import atomic_write_bytes

        text = "".join(f"{line}\n" for line in have + missing)
        atomic_write_bytes(ignore, lambda tmp: Path(tmp).write_text(text))


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
    ex.dicom_export = bool(getattr(opts, "dicom_export", False))
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
    anat.lesion_dir = str(Path(opts.lesion_dir).absolute()) if getattr(opts, "lesion_dir", None) else None
    anat.lesion_options = parse_lesion_options(getattr(opts, "lesion_options", []) or [])
    if anat.lesion_options and not anat.lesion_dir:
        raise InputError("--lesion-options needs --lesion-dir")
    if anat.roi_erode < 0:
        raise InputError(f"--roi-erode must be ≥ 0, got {anat.roi_erode}")
    if anat.atlases and not anat.template:
        raise InputError("--atlas needs --template (atlases live in a template space)")
    if (anat.template or anat.atlases or anat.segmentation_dir or anat.lesion_dir) and not anat.coreg:
        raise InputError("--template/--atlas/--segmentation-dir/--lesion-dir need the GRE→T1w registration; "
                         "drop --no-coreg")
    if opts.config:
        config.update_workflow(load_preset(opts.config), source=str(opts.config))
    if getattr(opts, "phase_units", None):  # the command line wins over the preset
        config.update_workflow({"workflow": {"phase_units": opts.phase_units}}, source="--phase-units")
    ex.mask = str(Path(opts.mask).absolute()) if getattr(opts, "mask", None) else None
    ex.derivatives = str(Path(opts.derivatives).absolute()) if getattr(opts, "derivatives", None) else None
    ex.r2_dir = str(Path(opts.r2_dir).absolute()) if getattr(opts, "r2_dir", None) else None
    if ex.r2_dir and config.workflow.stages["chi_separation"].method == "none":
        raise InputError("--r2-dir is for chi-separation: also set {\"workflow\": {\"chi_separation\": "
                         "\"chisep\"}} in the --config preset")
    return config


def parse_lesion_options(items):
    """``["outer_mm=4", ...]`` → ``{"outer_mm": 4.0}``, checked against the lesion functions'
    signatures (names, and a number where the default is one)."""
    from qsmprep.analysis.lesions import check_options, lesion_parameters

    known = lesion_parameters()
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise InputError(f"--lesion-options: {item!r} is not KEY=VALUE with KEY one of {sorted(known)}")
        try:
            val = None if value.strip().lower() in ("none", "default") else float(value)
        except ValueError:
            raise InputError(f"--lesion-options: {key} must be a number, got {value!r}") from None
        if val is not None and (not math.isfinite(val) or val < 0):
            raise InputError(f"--lesion-options: {key} must be a finite number >= 0, got {value!r}")
        if isinstance(known[key], int) and not isinstance(known[key], bool) and val is not None:
            if val != int(val):
                raise InputError(f"--lesion-options: {key} must be an integer, got {value!r}")
            val = int(val)
        out[key] = val
    try:
        check_options(out)
    except ValueError as exc:
        raise InputError(f"--lesion-options: {exc}") from None
    return out


#: Seconds between MultiProc scheduling passes (Nipype's default, 2 s, is for batch queues).
MULTIPROC_POLL_S = 0.1


def run_participant(config):
    """Validate inputs, build and run the participant-level workflow."""
    from nipype import config as ncfg

    from qsmprep.bids import collect_gre, derivative_path
    from qsmprep.cli.progress import PROGRESS_LOGGER
    from qsmprep.workflows.base import init_qsmprep_wf

    ex = config.execution
    check_paths(ex.bids_dir, ex.output_dir, ex.work_dir)
    created = []
    try:  # input problems found before processing leave no empty output/work folders behind
        created += check_writable(ex.output_dir, "output folder")
        created += check_writable(ex.work_dir, "work folder")
        _CRASH_DIRS[:] = [Path(ex.output_dir) / "log" / ex.run_uuid, Path(ex.work_dir)]
        records = collect_gre(
            ex.bids_dir, participant_label=ex.participant_label, session_label=ex.session_label,
            validate=not ex.skip_bids_validation, b0=ex.b0,
        )
        if not records:
            raise InputError("the dataset has no participants with GRE data (no sub-<label>/ folders)",
                             path=ex.bids_dir)
        check_inputs(records)
        # after qsmprep's own checks, whose messages name the file and the fix for what it knows
        # (a missing EchoTime, a damaged file), the BIDS validator holds the dataset to the standard
        if not ex.skip_bids_validation:
            from qsmprep.validator import run_bids_validator

            run_bids_validator(ex.bids_dir)
    except InputError:
        _remove_empty(created)
        raise
    subjects = sorted({r.subject for r in records})
    PROGRESS_LOGGER.info("qsmprep %s: %d acquisition(s) of %d participant(s): %s", __version__, len(records),
                         len(subjects), ", ".join(f"sub-{s}" for s in subjects))

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
    if ex.plugin == "MultiProc":
        # Nipype's scheduler sleeps until 2 s after the start of each pass, so every step of
        # a dependency chain waited up to 2 s for the next to start; MultiProc's results arrive
        # in this process, so a short pass costs nothing (the SLURM plugins keep 2 s: each pass
        # asks squeue)
        workflow.config["execution"]["poll_sleep_duration"] = MULTIPROC_POLL_S
    from qsmprep.cli.progress import ProgressReporter, count_steps

    progress = ProgressReporter(count_steps(workflow))
    plugin_args = {"n_procs": ex.nprocs, "raise_insufficient": False, "status_callback": progress}
    if ex.mem_gb:
        plugin_args["memory_gb"] = ex.mem_gb
    write_dataset_description(ex.output_dir, config)
    finished = False
    try:
        if ex.plugin == "Linear":
            workflow.run(plugin="Linear", plugin_args={"status_callback": progress})
        elif ex.plugin in ("SLURM", "SLURMGraph"):
            from qsmprep.cli.slurm import slurm_plugin, wait_for_jobs

            name, args = slurm_plugin(workflow, ex.plugin, ex.plugin_args or {})
            workflow.run(plugin=name, plugin_args={**args, "status_callback": progress})
            if ex.plugin == "SLURMGraph" and (ex.plugin_args or {}).get("wait", True):
                PROGRESS_LOGGER.info("SLURMGraph: all steps submitted; waiting for the jobs to leave the queue")
                wait_for_jobs(Path(ex.work_dir) / workflow.name / "batch")
                missing = [r.prefix for r in records if not derivative_path(ex.output_dir, r.entities, "Chimap").is_file()]
                if missing:
                    raise RuntimeError(f"SLURM jobs ended without the χ maps of {', '.join(missing)}")
        else:
            from qsmprep.cli.multiproc import OrphanSafeMultiProcPlugin

            workflow.run(plugin=OrphanSafeMultiProcPlugin(plugin_args=plugin_args))
        finished = True
    except RuntimeError as exc:
        problems = _input_errors_from_crashes(crash_dirs)
        if problems:
            raise InputError("; ".join(problems)) from exc
        environment = _environment_errors_from_crashes(crash_dirs)
        if environment:
            raise EnvironmentProblem("; ".join(environment)) from exc
        raise ProcessingError(
            f"processing failed ({_one_line(exc).rstrip('.')}); crash reports are in "
            + ", ".join(str(d) for d in crash_dirs)
        ) from exc
    finally:
        progress.flush()
        try:
            write_dataset_description(ex.output_dir, config)
        except OSError as exc:
            if finished:  # nothing else is on its way out: this is the error to report
                raise
            LOGGER.warning("could not update %s: %s", Path(ex.output_dir) / "dataset_description.json", exc)
        write_reports(config, records, subjects)
    return records


def write_reports(config, records, subjects):
    """Participant reports (``sub-<L>.html``) and the methods boilerplate; never raises."""
    from qsmprep.cli.progress import PROGRESS_LOGGER
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
            PROGRESS_LOGGER.info("report: %s", path)
        except Exception as exc:  # noqa: BLE001
            LOGGER.warning("could not write the report of sub-%s: %s", sub, exc)


def main(argv=None):
    """Console script ``qsmprep``.

    Exit status: 0 success; 2 a problem with the input or the machine (one line on stderr:
    InputError, or an OSError such as a full disk or a permission problem, naming the path);
    1 a processing failure (crash reports) or an internal error (one line on stderr; the
    traceback goes to a crash file under the output folder's ``log/``, the work folder, or
    the temporary folder); 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _CRASH_DIRS.clear()
    try:
        return _main(argv)
    except InputError as exc:
        print(f"qsmprep: error: {exc}", file=sys.stderr)
        return 2
    except EnvironmentProblem as exc:
        print(f"qsmprep: error: {exc}", file=sys.stderr)
        return 2
    except ProcessingError as exc:
        print(f"qsmprep: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the machine: full disk, permissions, a folder gone (FileExistsError too)
        print(f"qsmprep: error: {describe_oserror(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qsmprep: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback in a file
        crash = _write_crash(exc)
        where = f"traceback written to {crash}" if crash else "no folder was writable for the traceback"
        print(f"qsmprep: internal error ({type(exc).__name__}: {_one_line(exc)}); {where}", file=sys.stderr)
        if crash is None:
            traceback.print_exc()
        return 1


def _main(argv):
    if argv and argv[0] == "prefetch":
        from qsmprep.templates import main_prefetch

        return main_prefetch(argv[1:])
    if argv and argv[0] == "slurm-script":
        from qsmprep.cli.slurm import main_slurm_script

        return main_slurm_script(argv[1:])
    if argv and argv[0] == "calibrate":
        from qsmprep.cli.calibrate import main_calibrate

        return main_calibrate(argv[1:])
    if argv and argv[0] == "dicom2bids":
        from qsmprep.cli.dicom2bids import main_dicom2bids

        return main_dicom2bids(argv[1:])
    if argv and argv[0] == "stage":
        from qsmprep.cli.stage import main_stage

        return main_stage(argv[1:])
    if argv and argv[0] == "demo":
        opts = get_demo_parser().parse_args(argv[1:])
        from qsmprep.cli.demo import run_demo

        _setup_logging(opts.verbosity)
        return run_demo(opts)
    opts = get_parser().parse_args(argv)
    _setup_logging(opts.verbosity)
    if opts.analysis_level == "group":
        from qsmprep.reports.group import run_group

        check_paths(opts.bids_dir, opts.output_dir, opts.work_dir or Path.cwd() / "work")
        _CRASH_DIRS[:] = [Path(opts.output_dir).absolute() / "log"]
        gdir = run_group(opts.bids_dir, opts.output_dir, opts.participant_label, calibration=opts.calibration)
        if opts.verbosity >= 0:
            print(f"qsmprep group level finished; tables and report in {gdir}")
        return 0
    if opts.calibration is not None:
        get_parser().error("--calibration applies to the group level (qsmprep BIDS_DIR OUT_DIR group "
                           "--calibration TSV); the participant derivatives stay uncalibrated")
    config = build_config(opts)
    records = run_participant(config)
    if opts.verbosity >= 0:
        print(f"qsmprep finished {len(records)} acquisition(s); derivatives in {config.execution.output_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

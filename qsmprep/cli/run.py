"""Entry point ``qsmprep``: parse, validate inputs, build the workflow, run it."""

from __future__ import annotations

import errno
import logging
import os
import sys
import re
import tempfile
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

from qsmprep import __version__
from qsmprep.cli.parser import get_demo_parser, get_parser
from qsmprep.errors import InputError

LOGGER = logging.getLogger("nipype.workflow")


class ProcessingError(RuntimeError):
    """A node failed for a reason that is not an input problem (see the crash reports)."""


class EnvironmentProblem(RuntimeError):
    """A node failed because of the machine (full disk, permissions); exit 2 like an OSError."""


#: Where an internal error's traceback is written (set as soon as the output/work folders
#: are known and checked); the temporary folder otherwise.
_CRASH_DIRS: list = []


#: One line per record (Nipype's own format puts the message on a second, indented line).
_LOG_FORMAT = "%(asctime)s,%(msecs)03d %(name)s %(levelname)s: %(message)s"
_LOG_DATEFMT = "%y%m%d-%H:%M:%S"


def _levels(verbosity):
    """(Nipype workflow, interface/utils, progress) levels for ``-q`` (-1), default (0), -v, -vv."""
    if verbosity < 0:
        return logging.ERROR, logging.ERROR, logging.ERROR
    if verbosity == 0:  # progress lines, warnings and errors; no Nipype INFO chatter
        return logging.WARNING, logging.WARNING, logging.INFO
    if verbosity == 1:
        return logging.INFO, logging.INFO, logging.INFO
    return logging.DEBUG, logging.DEBUG, logging.DEBUG


class _CrashTracebackFilter(logging.Filter):
    """Keep Nipype's "Saving crash info to <file>" line, drop the traceback it appends.

    Nipype (plugins/tools.py ``report_crash``) logs every failed node's traceback at ERROR;
    the crash file holds it, and a traceback on the terminal for a bad input is what the CLI
    promises not to print.  Installed at the default verbosity and ``-q`` (``-v`` keeps it).
    """

    def filter(self, record):
        if isinstance(record.msg, str) and record.msg.startswith("Saving crash info to %s\n") and record.args:
            record.msg, record.args = "Saving crash info to %s", tuple(record.args)[:1]
        return True


_CRASH_FILTER = _CrashTracebackFilter()


def _one_line(text, limit=400):
    """A message for one stderr line: the last line of a multi-line text (a traceback's
    exception line), whitespace collapsed, at most ``limit`` characters."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    text = " ".join((lines[-1] if len(lines) > 1 else " ".join(lines)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _setup_logging(verbosity):
    from nipype import config as ncfg
    from nipype import logging as nlogging

    from qsmprep.cli.progress import PROGRESS_LOGGER

    workflow, other, progress = _levels(verbosity)
    ncfg.update_config({"logging": {"workflow_level": logging.getLevelName(workflow),
                                    "interface_level": logging.getLevelName(other),
                                    "utils_level": logging.getLevelName(other)}})
    nlogging.update_logging(ncfg)
    # qsmprep's own lines (progress, the start line, report paths) have their own level, so
    # the default shows them while Nipype's INFO messages on nipype.workflow stay hidden
    PROGRESS_LOGGER.setLevel(progress)
    workflow_logger = logging.getLogger("nipype.workflow")
    if verbosity <= 0:
        workflow_logger.addFilter(_CRASH_FILTER)  # (a set: adding twice keeps one)
    else:
        workflow_logger.removeFilter(_CRASH_FILTER)
    # the log goes to the current stderr (stdout is for the run's result): Nipype's own
    # handler writes to the stdout of import time, and a handler left on a replaced or closed
    # stream (an earlier in-process call, e.g. under a test runner) would lose every line
    for name in ("nipype", "nipype.workflow", "nipype.interface", "nipype.utils", ""):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:  # not FileHandler (a subclass)
                handler.stream = sys.stderr  # (setStream would flush a closed stream)
            if name == "nipype" and isinstance(handler, logging.StreamHandler):
                handler.setFormatter(logging.Formatter(_LOG_FORMAT, _LOG_DATEFMT))


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


def check_writable(path, what):
    """Create ``path`` (a folder) if needed and prove it writable with a probe file.

    Raises InputError naming the folder: a file in its place or in place of a parent, a
    parent that cannot be created, or a folder where no file can be created (permissions,
    read-only file system, full disk).  Root ignores permission bits, so as root only the
    "file in the way" and read-only-mount cases can fail.

    Returns the folders it created (outermost first), for :func:`_remove_empty`.
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"the {what} is a file, not a folder", path=path)
    created = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise InputError(f"cannot create the {what}: {exc.strerror or exc}{where}", path=path) from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".qsmprep-write-test-")
    except OSError as exc:
        raise InputError(f"the {what} is not writable ({exc.strerror or exc})", path=path) from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot remove files in the {what} ({exc.strerror or exc})", path=path) from None
    return created


def _remove_empty(folders):
    """Remove the folders :func:`check_writable` created, innermost first, where still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def check_inputs(records):
    """Refuse damaged input NIfTI files (all GRE echoes and T1w images) before processing."""
    from qsmprep.integrity import check_files

    paths = [p for r in records for p in (*r.source_files, r.t1w)]
    check_files(paths, full=True)


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
    if getattr(opts, "phase_units", None):  # the command line wins over the preset
        config.update_workflow({"workflow": {"phase_units": opts.phase_units}}, source="--phase-units")
    ex.mask = str(Path(opts.mask).absolute()) if getattr(opts, "mask", None) else None
    ex.derivatives = str(Path(opts.derivatives).absolute()) if getattr(opts, "derivatives", None) else None
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


#: errno values that mean the machine, not qsmprep or the data: full disk, quota, permissions.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
_ERRNO_LINE = re.compile(r"\b(?:OSError|PermissionError|IOError): \[Errno (\d+)\] (.+)$")


def _environment_errors_from_crashes(crash_dirs):
    """Full-disk / permission errors (``OSError: [Errno 28] ...``) found in Nipype crash files."""
    found = []
    for folder in crash_dirs:
        for crash in sorted(Path(folder).glob("crash-*.txt")):
            for line in crash.read_text(errors="replace").splitlines():
                match = _ERRNO_LINE.search(line.strip())
                if match and int(match.group(1)) in _ENVIRONMENT_ERRNOS:
                    msg = _describe_errno(int(match.group(1)), match.group(2))
                    if msg not in found:
                        found.append(msg)
    return found


def _describe_errno(code, text):
    """``<path>: <strerror>`` from ``<strerror>: '<path>'`` as Python prints an OSError."""
    strerror, _, where = text.partition(": ")
    where = where.strip().strip("'\"")
    return f"{where}: {strerror}" if where else strerror


def describe_oserror(exc):
    """One line for an OSError: the path(s) and the system's reason."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    reason = exc.strerror or _one_line(exc)
    if not paths:
        return reason
    hint = " (disk full?)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{' -> '.join(paths)}: {reason}{hint}"


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


def _write_crash(exc):
    """Save the traceback of an internal error; the file's path (``None`` if nowhere writable)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = f"qsmprep {__version__}, {datetime.now(timezone.utc).isoformat()}, argv {sys.argv!r}\n\n{text}"
    name = f"qsmprep-crash-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.txt"
    for folder in [*_CRASH_DIRS, Path(tempfile.gettempdir())]:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder) / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


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
    if argv and argv[0] == "demo":
        opts = get_demo_parser().parse_args(argv[1:])
        _setup_logging(opts.verbosity)
        return run_demo(opts)
    opts = get_parser().parse_args(argv)
    _setup_logging(opts.verbosity)
    if opts.analysis_level == "group":
        from qsmprep.reports.group import run_group

        check_paths(opts.bids_dir, opts.output_dir, opts.work_dir or Path.cwd() / "work")
        _CRASH_DIRS[:] = [Path(opts.output_dir).absolute() / "log"]
        gdir = run_group(opts.bids_dir, opts.output_dir, opts.participant_label)
        if opts.verbosity >= 0:
            print(f"qsmprep group level finished; tables and report in {gdir}")
        return 0
    config = build_config(opts)
    records = run_participant(config)
    if opts.verbosity >= 0:
        print(f"qsmprep finished {len(records)} acquisition(s); derivatives in {config.execution.output_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

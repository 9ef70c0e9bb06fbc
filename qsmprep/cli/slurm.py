"""SLURM execution: Nipype's ``SLURM``/``SLURMGraph`` plugins and the array-job script.

Two ways to use a cluster (README, "Clusters"):

* ``--plugin SLURM`` (one sbatch job per workflow step; qsmprep stays running and polls) or
  ``--plugin SLURMGraph`` (every step submitted at once with ``--dependency=afterok``;
  qsmprep waits until its jobs have left the queue, then writes the reports).  Each job asks
  for the memory and CPUs of its step (``--mem`` from the node's ``mem_gb`` estimate,
  ``--cpus-per-task`` from ``n_procs``); ``--plugin-args`` adds sbatch options.
* ``qsmprep slurm-script bids out --participant-label ...``: the pattern recommended for large
  cohorts — one array task per participant, each running the participant level with
  MultiProc on the task's CPUs.  Printed, or submitted with ``--submit``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from qsmprep.errors import InputError

LOGGER = logging.getLogger("nipype.workflow")
SLURM_PLUGINS = ("SLURM", "SLURMGraph")
#: ``--plugin-args`` keys turned into sbatch options
_SBATCH_KEYS = {"partition": "--partition", "time": "--time", "account": "--account", "qos": "--qos"}
#: keys passed to the Nipype plugin unchanged
_PLUGIN_KEYS = {"sbatch_args", "max_jobs", "retry_timeout", "max_tries", "poll_sleep_duration", "template",
                "dont_resubmit_completed_jobs", "jobid_re"}


def load_plugin_args(value):
    """``--plugin-args``: a JSON or YAML mapping, inline or in a file."""
    if value is None:
        return {}
    text = str(value)
    source = "--plugin-args"
    path = Path(text).expanduser()
    if path.is_file():
        text, source = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml

            data = yaml.safe_load(text)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the user's input
            raise InputError(f"not a JSON or YAML mapping: {' '.join(str(exc).split())}", path=source) from exc
    if not isinstance(data, dict):
        raise InputError("--plugin-args must be a mapping, e.g. '{\"partition\": \"short\"}'", path=source)
    unknown = set(data) - set(_SBATCH_KEYS) - _PLUGIN_KEYS - {"wait"}
    if unknown:
        raise InputError(f"unknown --plugin-args key(s) {sorted(unknown)}; known: "
                         f"{sorted(set(_SBATCH_KEYS) | _PLUGIN_KEYS | {'wait'})}", path=source)
    return data


def sbatch_args(plugin_args):
    """The sbatch options of ``plugin_args`` (``sbatch_args`` plus partition/time/account/qos)."""
    parts = [str(plugin_args.get("sbatch_args", "")).strip()]
    for key, flag in _SBATCH_KEYS.items():
        if plugin_args.get(key):
            parts.append(f"{flag}={plugin_args[key]}")
    return " ".join(p for p in parts if p)


def node_sbatch_args(node):
    """``--mem`` and ``--cpus-per-task`` of one Nipype node from its estimates."""
    mem_mb = max(256, int(math.ceil(float(node.mem_gb) * 1024 * 1.2)) + 512)  # + Python/Nipype overhead
    return f"--mem={mem_mb}M --cpus-per-task={max(1, int(node.n_procs))}"


def slurm_plugin(workflow, plugin, plugin_args):
    """Plugin name and arguments for ``workflow.run``; sets per-node sbatch resources."""
    if shutil.which("sbatch") is None:
        raise InputError(f"--plugin {plugin} needs SLURM's sbatch on PATH (run on a cluster login node)")
    import getpass
    import os

    os.environ.setdefault("LOGNAME", getpass.getuser())  # Nipype's SLURM plugin names jobs with it
    for node in workflow._get_all_nodes():  # noqa: SLF001 - Nipype has no public iterator
        node.plugin_args = {**(node.plugin_args or {}), "sbatch_args": node_sbatch_args(node)}
    args = {k: v for k, v in plugin_args.items() if k in _PLUGIN_KEYS}
    # trailing space: SLURMGraph appends each node's own sbatch_args without a separator
    args["sbatch_args"] = (sbatch_args(plugin_args) + " ").lstrip()
    return plugin, args


def wait_for_jobs(batch_dir, *, poll=5.0, timeout=None):
    """Block until no job of this user runs a batch script from ``batch_dir`` (SLURMGraph's
    scripts live in ``<work>/<workflow>/batch/``, so this waits for this run's jobs only)."""
    start = time.monotonic()
    batch_dir = str(batch_dir)
    while True:
        out = subprocess.run(["squeue", "--me", "-h", "-o", "%o"], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"squeue failed: {out.stderr.strip()}")
        if not any(line.strip().startswith(batch_dir) for line in out.stdout.splitlines()):
            return
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"SLURM jobs from {batch_dir} still queued after {timeout} s")
        time.sleep(poll)


# ----------------------------------------------------------------------------- array script

def get_slurm_script_parser():
    parser = argparse.ArgumentParser(
        prog="qsmprep slurm-script",
        description="Print (or submit) a SLURM array job with one participant per task, each running "
                    "`qsmprep BIDS_DIR OUTPUT_DIR participant` with MultiProc on the task's CPUs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="participants (one array task each); all with GRE data by default")
    parser.add_argument("-w", "--work-dir", type=Path, help="work directory root (one sub-folder per participant)")
    parser.add_argument("--nprocs", type=int, default=4, help="CPUs per task (--cpus-per-task)")
    parser.add_argument("--mem-gb", type=float, default=16.0, help="memory per task (GB)")
    parser.add_argument("--time", default="04:00:00", help="wall time per task")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--max-parallel", type=int, help="at most this many tasks at once (%%N of --array)")
    parser.add_argument("--log-dir", type=Path, help="folder for the tasks' logs (default OUTPUT_DIR/logs/slurm)")
    parser.add_argument("--qsmprep", default=None, help="command that runs qsmprep in the tasks "
                        "(default: this installation's interpreter; e.g. 'apptainer run qsmprep.sif')")
    parser.add_argument("--submit", action="store_true", help="submit with sbatch instead of printing")
    parser.epilog = ("Options after `--` are passed to `qsmprep ... participant` in every task, "
                     "e.g. `-- --template MNI152NLin2009cAsym --atlas HOSPA:th25`.")
    return parser


def build_array_script(opts, labels):
    """Text of the sbatch array script for ``labels``."""
    bids = Path(opts.bids_dir).absolute()
    out = Path(opts.output_dir).absolute()
    work = Path(opts.work_dir).absolute() if opts.work_dir else out.parent / "qsmprep_work"
    logs = Path(opts.log_dir).absolute() if opts.log_dir else out / "logs" / "slurm"
    runner = opts.qsmprep or f"{shlex.quote(sys.executable)} -m qsmprep.cli.run"
    extra = list(getattr(opts, "extra", None) or [])
    array = f"0-{len(labels) - 1}" + (f"%{opts.max_parallel}" if opts.max_parallel else "")
    lines = ["#!/bin/bash",
             "#SBATCH --job-name=qsmprep",
             f"#SBATCH --array={array}",
             f"#SBATCH --cpus-per-task={opts.nprocs}",
             f"#SBATCH --mem={int(math.ceil(opts.mem_gb * 1024))}M",
             f"#SBATCH --time={opts.time}",
             f"#SBATCH --output={logs}/qsmprep_%A_%a.log"]
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    lines += ["# one participant per array task; each task runs MultiProc on its own CPUs",
              "set -euo pipefail",
              "export OMP_NUM_THREADS=1 PYTHONNOUSERSITE=1",
              f"LABELS=({' '.join(shlex.quote(lab) for lab in labels)})",
              'LABEL="${LABELS[$SLURM_ARRAY_TASK_ID]}"',
              f"{runner} {shlex.quote(str(bids))} {shlex.quote(str(out))} participant \\",
              '    --participant-label "$LABEL" --nprocs "${SLURM_CPUS_PER_TASK:-1}" '
              f'--mem-gb {opts.mem_gb:g} \\',
              f'    -w {shlex.quote(str(work))}/"sub-$LABEL"'
              + (" " + " ".join(shlex.quote(a) for a in extra) if extra else "")]
    return "\n".join(lines) + "\n", logs


def main_slurm_script(argv):
    """``qsmprep slurm-script``: print or submit the array job; return the exit code."""
    from qsmprep.bids import collect_gre

    argv = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    opts = get_slurm_script_parser().parse_args(argv)
    opts.extra = extra
    labels = [lab[4:] if lab.startswith("sub-") else lab for lab in (opts.participant_label or [])]
    if not labels:
        labels = sorted({r.subject for r in collect_gre(opts.bids_dir, validate=False)})
    else:
        found = {r.subject for r in collect_gre(opts.bids_dir, participant_label=labels, validate=False)}
        missing = sorted(set(labels) - found)
        if missing:
            raise InputError(f"no GRE data for participant(s) {missing}", path=opts.bids_dir)
    script, logs = build_array_script(opts, labels)
    if not opts.submit:
        print(script, end="")
        return 0
    if shutil.which("sbatch") is None:
        raise InputError("--submit needs SLURM's sbatch on PATH")
    logs.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"sbatch refused the array job: {proc.stderr.strip()}")
    job = proc.stdout.strip().split(";")[0]
    print(f"submitted array job {job} ({len(labels)} participant(s)); logs in {logs}")
    return 0

"""``qsmprep stage``: one stage of the QSM-CI benchmark's contract (:mod:`qsmprep.qsmci`).

::

    qsmprep stage {field-mapping,bfr,dipole,bfr+dipole,end-to-end} [--method M] [--params JSON]
                  [--config PRESET] [--nthreads N] INPUT_DIR OUTPUT_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qsmprep.cli.parser import _DefaultsFormatter, _add_verbosity, _existing_file, _positive_int
from qsmprep.errors import InputError
from qsmprep.qsmci.contract import STAGES
from qsmprep.qsmci.stages import PRIMARY


def get_stage_parser():
    from qsmprep.config import DEFAULT_METHODS, METHODS

    methods = "; ".join(f"{s}: {', '.join(METHODS[PRIMARY[s]])} (default {DEFAULT_METHODS[PRIMARY[s]]})"
                        for s in ("field-mapping", "bfr", "dipole"))
    parser = argparse.ArgumentParser(
        prog="qsmprep stage",
        description="Run one stage of the QSM-CI contract: read the artifacts the stage consumes from "
        "INPUT_DIR (phase.nii.gz in rad, magnitude.nii.gz, mask.nii.gz, params.json, totalfield/localfield "
        "in ppm, optional config.json overrides) and write what it produces (totalfield, localfield or "
        "chimap.nii.gz, ppm, with a JSON sidecar) to OUTPUT_DIR.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("stage", choices=list(STAGES), help="QSM-CI stage or span")
    parser.add_argument("input_dir", type=Path, help="folder with the consumed artifacts (never written)")
    parser.add_argument("output_dir", type=Path, help="folder for the produced artifact (created)")
    parser.add_argument("--method", help=f"the stage's method ({methods}; the spans take an inversion method); "
                        "default the pipeline's")
    parser.add_argument("--params", metavar="JSON",
                        help="options of --method as a JSON object (or a path to a .json file), on top of "
                        "INPUT_DIR/config.json")
    parser.add_argument("--config", type=_existing_file, metavar="PRESET",
                        help="workflow preset as for `participant --config` (the other stages of a span)")
    parser.add_argument("--nthreads", type=_positive_int, default=None,
                        help="threads for FFTs and compiled loops (default all cores)")
    _add_verbosity(parser)
    return parser


def _params(text):
    if text is None:
        return None
    source = "--params"
    if not text.lstrip().startswith("{") and Path(text).is_file():
        source, text = text, Path(text).read_text()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{source} must be a JSON object of the method's options, got {type(value).__name__}")
    return value


def main_stage(argv):
    opts = get_stage_parser().parse_args(argv)
    from qsmprep.cli.logs import _setup_logging
    from qsmprep.qsmci.stages import run_stage

    _setup_logging(opts.verbosity)
    inp, out = opts.input_dir.absolute(), opts.output_dir.absolute()
    if out == inp or inp in out.parents:
        raise InputError("OUTPUT_DIR must not be INPUT_DIR or inside it (the input is never written)", path=out)
    path = run_stage(opts.stage, inp, out, method=opts.method, params=_params(opts.params), preset=opts.config,
                     workers=opts.nthreads)
    if opts.verbosity >= 0:
        print(f"qsmprep stage {opts.stage}: wrote {path}")
    return 0

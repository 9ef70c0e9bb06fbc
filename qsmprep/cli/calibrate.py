"""Sub-command ``qsmprep calibrate``: χ of a tube phantom against the tubes' concentrations.

Runs the participant level on the phantom dataset (no T1w, no registration), then per scan
the mean χ of each tube (:func:`qsmprep.analysis.calibration.tube_masks`) and the linear fit
of χ against concentration; writes ``OUT/calibration/``: ``calibration_tubes.tsv`` (scan,
tube, concentration, χ mean/SD/voxels), ``calibration_fit.tsv`` (scan, slope, intercept, R²,
95 % intervals, and the calibration factor ``reference slope / slope`` when
``--reference-slope`` is given), ``calibration.json`` and a plot per scan.  Unwrapping is
ROMEO unless the preset sets another (see :func:`main_calibrate`).
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from qsmprep.cli.parser import _DefaultsFormatter, _add_verbosity, _existing_dir, _existing_file, _positive_int


def get_calibrate_parser():
    parser = argparse.ArgumentParser(
        prog="qsmprep calibrate", formatter_class=_DefaultsFormatter,
        description="Process a tube phantom's BIDS dataset and fit its tubes' chi against their concentrations.")
    parser.add_argument("bids_dir", type=_existing_dir, help="the phantom's BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="derivatives folder to write")
    parser.add_argument("--tubes", type=_existing_file, required=True, metavar="TSV",
                        help="tube table: tube, concentration[, concentration_units], and mask or label[, label_map]")
    parser.add_argument("--label-map", type=_existing_file, metavar="FILE",
                        help="label map of the tubes, for a table with a label column and no label_map column")
    parser.add_argument("--reference-slope", type=float, metavar="PPM_PER_UNIT",
                        help="the agent's known molar susceptibility (e.g. 0.326 ppm/mM for gadolinium at room "
                             "temperature): gives each scan's calibration factor")
    parser.add_argument("--erode-voxels", type=int, default=1, metavar="N",
                        help="erode each tube mask by N voxels (partial volume at the walls)")
    parser.add_argument("--participant-label", nargs="+", metavar="LABEL")
    parser.add_argument("--config", type=_existing_file, metavar="PRESET", help="workflow preset (JSON/TOML)")
    parser.add_argument("--nprocs", type=_positive_int, default=1)
    parser.add_argument("-w", "--work-dir", type=Path)
    _add_verbosity(parser)
    return parser


def main_calibrate(argv):
    import nibabel as nib
    import numpy as np

    from qsmprep.analysis.calibration import calibration_factor, linear_fit, read_tubes, tube_masks
    from qsmprep.analysis.roi import write_roistats
    from qsmprep.bids import derivative_path, strip_prefix
    from qsmprep.cli.checks import check_writable
    from qsmprep.cli.run import run_participant
    from qsmprep.config import Config, load_preset
    from qsmprep.errors import InputError

    opts = get_calibrate_parser().parse_args(argv)
    if opts.erode_voxels < 0:
        raise InputError(f"--erode-voxels must be >= 0, got {opts.erode_voxels}")
    tubes = read_tubes(opts.tubes, opts.label_map)
    out = Path(opts.output_dir).absolute()
    check_writable(out, "output folder")
    config = Config()
    ex = config.execution
    ex.bids_dir, ex.output_dir = str(Path(opts.bids_dir).absolute()), str(out)
    ex.work_dir = str(Path(opts.work_dir).absolute()) if opts.work_dir else str(out.parent / "work_calibrate")
    ex.nprocs, ex.verbosity = opts.nprocs, opts.verbosity
    ex.participant_label = strip_prefix(opts.participant_label, "sub-")
    ex.run_uuid = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"
    config.anat.coreg = False
    # ROMEO unwrapping unless the preset says otherwise: tubes of strong sources have phase
    # gradients near pi per voxel around them, where Laplacian unwrapping underestimates the
    # field (measured on the demo tube phantom, 0-5 mM Gd at 2 mm: slope 0.204 ppm/mM with
    # Laplacian, 0.3256 with ROMEO, truth 0.326)
    config.update_workflow({"workflow": {"unwrapping": "romeo"}}, source="qsmprep calibrate")
    if opts.config:
        config.update_workflow(load_preset(opts.config), source=str(opts.config))
    records = run_participant(config)

    cdir = out / "calibration"
    (cdir / "figures").mkdir(parents=True, exist_ok=True)
    tube_rows, fit_rows, record = [], [], {"Tubes": str(opts.tubes), "ErodeVoxels": opts.erode_voxels,
                                           "ReferenceSlope": opts.reference_slope, "Scans": {},
                                           "Unwrapping": config.workflow.stages["unwrapping"].method}
    units = tubes[0]["units"]
    for rec in records:
        chi_path = derivative_path(out, rec.entities, "Chimap")
        chi_img = nib.load(chi_path)
        chi = np.asarray(chi_img.dataobj, np.float32)
        masks = tube_masks(tubes, chi_img, erode_voxels=opts.erode_voxels)
        conc, means = [], []
        for t in tubes:
            m = masks[t["tube"]] & (chi != 0)
            vals = chi[m].astype(np.float64)
            if vals.size == 0:
                raise InputError(f"{rec.prefix}: tube {t['tube']!r} has no voxel inside the chi mask "
                                 "(check the tube masks' geometry against the scan)", path=opts.tubes)
            tube_rows.append({"scan": rec.prefix, "tube": t["tube"], "concentration": t["concentration"],
                              "concentration_units": units, "chi_mean": float(vals.mean()),
                              "chi_std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0, "n_voxels": int(vals.size)})
            conc.append(t["concentration"])
            means.append(float(vals.mean()))
        fit = linear_fit(conc, means)
        row = {"scan": rec.prefix, "n_tubes": fit["n"], "slope": fit["slope"], "slope_ci_low": fit["slope_ci"][0],
               "slope_ci_high": fit["slope_ci"][1], "intercept": fit["intercept"],
               "intercept_ci_low": fit["intercept_ci"][0], "intercept_ci_high": fit["intercept_ci"][1],
               "r2": fit["r2"], "slope_units": f"ppm/{units}"}
        if opts.reference_slope is not None:
            row["calibration_factor"] = calibration_factor(fit["slope"], opts.reference_slope)
        fit_rows.append(row)
        record["Scans"][rec.prefix] = {**fit, "Chimap": str(chi_path.relative_to(out)),
                                       "ReferenceRegion": json.loads(chi_path.with_suffix("").with_suffix(".json")
                                                                     .read_text()).get("ReferenceRegion")}
        _plot(cdir / "figures" / f"{rec.prefix}_calibration.png", conc, means, fit, units, rec.prefix)
    write_roistats(tube_rows, cdir / "calibration_tubes.tsv", columns=tuple(tube_rows[0]))
    cols = tuple(fit_rows[0])
    write_roistats(fit_rows, cdir / "calibration_fit.tsv", columns=cols)
    (cdir / "calibration.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")
    lines = ["", f"qsmprep calibrate: {cdir}"]
    for r in fit_rows:
        lines.append(f"{r['scan']}: slope {r['slope']:.4f} ppm/{units} (95 % CI {r['slope_ci_low']:.4f}-"
                     f"{r['slope_ci_high']:.4f}), intercept {r['intercept']:+.4f} ppm, R² {r['r2']:.4f}"
                     + (f", calibration factor {r['calibration_factor']:.4f}" if "calibration_factor" in r else ""))
    print("\n".join(lines))
    return 0


def _plot(path, conc, means, fit, units, title):
    from qsmprep.reports.figures import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=100)
    ax.plot(conc, means, "o")
    xs = [min(conc), max(conc)]
    ax.plot(xs, [fit["slope"] * x + fit["intercept"] for x in xs], "-",
            label=f"{fit['slope']:.4f} ppm/{units}, R² {fit['r2']:.3f}")
    ax.set_xlabel(f"concentration ({units})")
    ax.set_ylabel("χ (ppm)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

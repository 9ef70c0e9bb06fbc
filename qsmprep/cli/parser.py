"""Command-line parsers: the BIDS App interface and the ``demo`` command."""

from __future__ import annotations

import argparse
from pathlib import Path

from qsmprep import __version__

#: First words that select a sub-command instead of the BIDS App positional interface.
SUBCOMMANDS = ("demo", "prefetch", "slurm-script", "stage", "dicom2bids")
#: ``--phase-units`` choices (the ``phase_units`` stage's methods in :mod:`qsmprep.config`).
PHASE_UNIT_CHOICES = ("auto", "radians", "degrees", "int12", "int12-signed", "uint16", "rescale")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` only where it tells something.

    Not for flags (store_true/store_false/store_const/count: the flag's presence is the
    setting), not for ``None``/empty defaults (nothing to show; the help says what happens),
    and not where the help text already names its default.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if (isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,  # noqa: SLF001
                                argparse._StoreConstAction, argparse._CountAction))  # noqa: SLF001
                or action.default in (None, argparse.SUPPRESS, [], ())
                or "default" in text.lower() or not action.option_strings):
            return text
        return super()._get_help_string(action)


def _add_verbosity(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                       help="more log output: -v adds Nipype's own messages, -vv debug messages "
                            "(by default only progress, warnings and errors are shown)")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       help="only errors")


def _positive_int(value):
    ivalue = int(value)
    if ivalue < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return ivalue


def _positive_float(value):
    fvalue = float(value)
    if fvalue <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return fvalue


def _existing_dir(value):
    path = Path(value).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"directory does not exist: {value}")
    return path.absolute()


def _existing_file(value):
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file does not exist: {value}")
    return path.absolute()


def _label(prefix):
    def strip(value):
        return value[len(prefix):] if value.startswith(prefix) else value

    return strip


def get_parser():
    """The BIDS App parser: ``qsmprep bids_dir output_dir {participant,group} [options]``."""
    parser = argparse.ArgumentParser(
        prog="qsmprep",
        description="Quantitative susceptibility mapping (QSM) and R2*/T2* from multi-echo GRE "
        "BIDS datasets. Other commands: `qsmprep demo OUT_DIR` makes and processes a phantom dataset; "
        "`qsmprep prefetch` downloads TemplateFlow files; `qsmprep slurm-script` writes a SLURM array job; "
        "`qsmprep stage STAGE IN OUT` runs one stage of the QSM-CI benchmark contract; "
        "`qsmprep dicom2bids DICOM_DIR BIDS_DIR --participant-label L` converts DICOMs to BIDS.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qsmprep {__version__}")
    parser.add_argument("bids_dir", type=_existing_dir, help="root of the BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="derivatives folder to write (e.g. <bids>/derivatives/qsmprep)")
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing level")

    g_bids = parser.add_argument_group("Selecting data")
    g_bids.add_argument("--participant-label", "--participant_label", nargs="+", type=_label("sub-"),
                        metavar="LABEL", help="participants to process (with or without 'sub-'); all by default")
    g_bids.add_argument("--session-label", "--session_label", nargs="+", type=_label("ses-"),
                        metavar="LABEL", help="sessions to process (with or without 'ses-'); all by default")
    g_bids.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                        help="do not run the BIDS validator (bids-validator-deno) on the dataset, and do not "
                             "let pybids validate file names")
    g_bids.add_argument("--b0", type=_positive_float, metavar="TESLA",
                        help="field strength to use when sidecars lack MagneticFieldStrength (overrides them)")

    g_perf = parser.add_argument_group("Resources")
    g_perf.add_argument("--nprocs", "--n-cpus", type=_positive_int, default=1, help="processes to run in parallel")
    g_perf.add_argument("--mem-gb", "--mem_gb", type=_positive_float, help="memory limit for MultiProc (GB)")
    g_perf.add_argument("--plugin", choices=["MultiProc", "Linear", "SLURM", "SLURMGraph"], default="MultiProc",
                        help="Nipype execution plugin: MultiProc (this machine), SLURM (one sbatch job per "
                             "step, polled), SLURMGraph (all steps submitted with dependencies), Linear (debugging)")
    g_perf.add_argument("--plugin-args", metavar="JSON|YAML|FILE",
                        help="options for the SLURM plugins: partition, time, account, qos, sbatch_args, "
                             "max_jobs, poll_sleep_duration, ... (inline JSON/YAML or a file)")
    g_perf.add_argument("-w", "--work-dir", type=Path,
                        help="work directory (default: ./work in the current directory; reused by "
                             "re-runs to skip finished steps)")

    g_anat = parser.add_argument_group("Anatomy: registration and ROI tables (when a T1w exists)")
    g_anat.add_argument("--no-coreg", dest="coreg", action="store_false",
                        help="do not register the GRE data to the T1w (no space-T1w outputs, no ROI tables)")
    g_anat.add_argument("--template", default="none", metavar="TEMPLATE",
                        help="TemplateFlow template for T1w normalisation and atlases: MNI152NLin2009cAsym, "
                             "MNI152NLin6Asym, or none (default; the run then needs no template files)")
    g_anat.add_argument("--atlas", nargs="+", default=[], metavar="NAME[:DESC]",
                        help="TemplateFlow atlases in --template for ROI tables, e.g. HOSPA:th25 HOCPAL:th25")
    g_anat.add_argument("--segmentation-dir", type=_existing_dir, metavar="DIR",
                        help="BIDS derivatives folder with T1w-space sub-<L>_*_dseg.nii.gz and dseg.tsv "
                             "(sMRIPrep, FastSurfer, converted FreeSurfer) for ROI tables")
    g_anat.add_argument("--roi-erode", type=int, default=0, metavar="VOXELS",
                        help="erode each label by this many voxels before ROI statistics (default 0)")
    g_anat.add_argument("--lesion-dir", type=_existing_dir, metavar="DIR",
                        help="BIDS derivatives folder with lesion masks per participant/session "
                             "(sub-<L>_*label-lesion_mask.nii.gz or *desc-lesion_dseg.nii.gz + dseg.tsv; T1w "
                             "space, or space-FLAIR/space-T2w of the session's image): the lesion table")
    g_anat.add_argument("--lesion-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="lesion analysis options, e.g. outer_mm=4 min_diameter_mm=3 (names and defaults: "
                             "README, Lesions)")
    g_anat.add_argument("--sloppy", action="store_true",
                        help="faster, less accurate registration (coarser pyramid; see README)")

    g_cfg = parser.add_argument_group("Algorithms")
    g_cfg.add_argument("--config", type=_existing_file, metavar="PRESET",
                       help="JSON or TOML preset with workflow settings (see README)")
    g_cfg.add_argument("--phase-units", choices=PHASE_UNIT_CHOICES, metavar="UNITS",
                       help="how the phase images are stored: " + ", ".join(PHASE_UNIT_CHOICES)
                            + "; overrides the preset's phase_units (default: auto, which detects only "
                              "unambiguous encodings and otherwise stops; see README 'Your data')")

    g_out = parser.add_argument_group("Outputs")
    g_out.add_argument("--dicom-export", action="store_true",
                       help="also write chi, R2* and T2* as DICOM series (PACS) under "
                            "sub-<L>[/ses-<S>]/dicom/<map>/, values in ppm, 1/s and s through the rescale slope")
    g_grp = parser.add_argument_group("Group level")
    g_grp.add_argument("--calibration", type=_existing_file, metavar="TSV",
                       help="per-site calibration factors (columns site, calibration_factor = reference / "
                            "measured tube-phantom slope from `qsmprep calibrate`): every chi value of the group "
                            "tables is multiplied by its scan's site factor; a scan whose site is missing stops "
                            "the run")
    g_mask = parser.add_argument_group("Masks")
    g_mask.add_argument("--mask", type=_existing_file, metavar="FILE",
                        help="brain mask (NIfTI in the GRE grid) to use instead of computing one; "
                             "for one acquisition only (use --derivatives for several)")
    g_mask.add_argument("--derivatives", type=_existing_dir, metavar="DIR",
                        help="BIDS derivatives folder with per-acquisition masks named like ours "
                             "(sub-<L>[_ses-<S>][_acq-<A>][_run-<R>]_desc-brain_mask.nii[.gz]); used "
                             "instead of computed masks where found")

    g_sep = parser.add_argument_group("Chi-separation")
    g_sep.add_argument("--r2-dir", type=_existing_dir, metavar="DIR",
                       help="BIDS derivatives folder with an R2 map per session (sub-<L>[_ses-<S>][_acq-<A>]"
                            "[_run-<R>]_R2map.nii[.gz], 1/s, or _T2map in s, e.g. from a multi-echo spin echo) "
                            "for chi_separation 'chisep' (R2' = R2* - R2); registered to the GRE. Without it "
                            "chisep uses the GRE-only approximation")
    _add_verbosity(parser)
    return parser


def get_demo_parser():
    """``qsmprep demo OUT_DIR``: write the phantom BIDS dataset and process it."""
    parser = argparse.ArgumentParser(
        prog="qsmprep demo",
        description="Generate the built-in phantom BIDS dataset in OUT_DIR/bids (ground truth in "
        "OUT_DIR/truth) and process it into OUT_DIR/derivatives/qsmprep.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="folder to create the demo in")
    parser.add_argument("--size", choices=["small", "full"], default="small",
                        help="small: 3 mm, 4 echoes (under two minutes); full: 1 mm, 8 echoes")
    parser.add_argument("--subjects", type=_positive_int, default=2, help="number of phantom participants")
    parser.add_argument("--nprocs", type=_positive_int, default=2, help="processes to run in parallel")
    parser.add_argument("--config", type=_existing_file, metavar="PRESET", help="workflow preset (JSON/TOML)")
    parser.add_argument("--r2-map", action="store_true",
                        help="with chi_separation 'chisep' in the preset: use the phantom's R2 maps "
                             "(OUT_DIR/truth/r2, as --r2-dir) instead of the GRE-only approximation")
    parser.add_argument("--single-session", dest="longitudinal", action="store_false",
                        help="no two-session participant (by default the last of two or more participants has "
                             "two sessions a year apart, for the longitudinal lesion table)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing demo in OUT_DIR (its bids, truth, work and derivatives)")
    _add_verbosity(parser)
    return parser

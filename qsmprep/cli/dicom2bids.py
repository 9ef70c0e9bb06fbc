"""``qsmprep dicom2bids DICOM_DIR BIDS_DIR --participant-label L [--session-label S]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from qsmprep.cli.parser import _DefaultsFormatter, _add_verbosity, _label


def get_dicom2bids_parser():
    parser = argparse.ArgumentParser(
        prog="qsmprep dicom2bids",
        description="Convert a folder of DICOMs (any nesting, mixed series) with dcm2niix into one participant "
        "(and session) of a BIDS dataset: multi-echo GRE magnitude/phase or real/imaginary, T1w and FLAIR; every "
        "other series is listed with the reason, not converted. DICOM_DIR is never written and no existing file "
        "in BIDS_DIR is replaced.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("dicom_dir", type=Path, help="folder of DICOM files (read only)")
    parser.add_argument("bids_dir", type=Path, help="BIDS dataset to add the participant to (created)")
    parser.add_argument("--participant-label", "--participant_label", required=True, type=_label("sub-"),
                        help="participant label (letters and digits; a leading sub- is removed)")
    parser.add_argument("--session-label", "--session_label", type=_label("ses-"), default=None,
                        help="session label (a leading ses- is removed)")
    parser.add_argument("--keep-identity", "--keep_identity", action="store_true",
                        help="keep the patient and study tags (name, ID, birth date, study UID, ...) in the "
                        "sidecars, so that --dicom-export files the maps with the source scan in a PACS; "
                        "off by default: the sidecars are anonymised, as dcm2niix does, because BIDS data "
                        "are made to be shared")
    _add_verbosity(parser)
    return parser


def main_dicom2bids(argv):
    opts = get_dicom2bids_parser().parse_args(argv)
    from qsmprep.cli.logs import _setup_logging
    from qsmprep.dicom.convert import dicom2bids

    _setup_logging(opts.verbosity)
    quiet = opts.verbosity < 0
    report = dicom2bids(opts.dicom_dir, opts.bids_dir, opts.participant_label, opts.session_label,
                        keep_identity=opts.keep_identity, log=(lambda *_: None) if quiet else print)
    if not quiet:
        print(f"qsmprep dicom2bids: {len(report['written'])} file(s) written into {opts.bids_dir}, "
              f"{len(report['listed'])} series not converted, in {report['seconds']:.1f} s")
    return 0

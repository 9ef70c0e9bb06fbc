"""The BIDS validator (bids-validator-deno) on what qsmprep reads and writes."""

import json

import pytest

from bidsutils import check_bidsignore, validator_errors
from qsmprep.demo import write_demo_dataset
from qsmprep.errors import InputError
from qsmprep.validator import find_validator, run_bids_validator

pytestmark = pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno is not installed")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("validator")
    info = write_demo_dataset(root, size="small", n_subjects=1)
    return root, info


def test_the_demo_dataset_is_valid_bids(demo):
    _, info = demo
    assert validator_errors(info["bids_dir"]) == []
    assert run_bids_validator(info["bids_dir"])["errors"] == 0


def test_validator_errors_stop_the_run_with_its_messages(demo, tmp_path):
    import shutil

    _, info = demo
    bids = tmp_path / "bids"
    shutil.copytree(info["bids_dir"], bids)
    side = bids / "sub-01" / "anat" / "sub-01_echo-1_part-phase_MEGRE.json"
    meta = json.loads(side.read_text())
    meta.pop("Units")
    side.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"SIDECAR_KEY_REQUIRED/Units at /sub-01/anat/sub-01_echo-1_part-phase_MEGRE"):
        run_bids_validator(bids)
    from qsmprep.cli.run import main

    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "-w", str(tmp_path / "w"), "--no-coreg"]) == 2
    assert not out.exists()  # refused before anything was written


def test_derivatives_pass_the_validator(demo, tmp_path):
    """A TKD run with the DICOM export; the full outputs (registration, ROI and lesion tables,
    χ-separation) are checked in test_e2e and test_chisep with the same helper."""
    from qsmprep.cli.run import main

    root, info = demo
    preset = tmp_path / "tkd.json"
    preset.write_text(json.dumps({"workflow": {"inversion": "tkd"}}))
    out = tmp_path / "out"
    assert main([info["bids_dir"], str(out), "participant", "-w", str(tmp_path / "w"), "--no-coreg",
                 "--config", str(preset), "--dicom-export"]) == 0
    check_bidsignore(out, tmp_path, expect_needed=("*_desc-totalfield_fieldmap.*", "*_desc-localfield_fieldmap.*",
                                                   "*_desc-echoaverage_magnitude.*",
                                                   "*_desc-echoaveragebrain_magnitude.*"))
    # an existing .bidsignore keeps the user's lines and gains qsmprep's
    (out / ".bidsignore").write_text("mine/\n")
    from qsmprep.cli.run import BIDSIGNORE, BIDSIGNORE_NONSTANDARD, build_config, write_dataset_description
    from qsmprep.cli.parser import get_parser

    write_dataset_description(out, build_config(get_parser().parse_args([info["bids_dir"], str(out), "participant"])))
    assert (out / ".bidsignore").read_text().splitlines() == ["mine/", *BIDSIGNORE, *BIDSIGNORE_NONSTANDARD]

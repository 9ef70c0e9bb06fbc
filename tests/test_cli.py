"""Command-line interface: parsing, path checks, and one-line errors for bad input."""

import json

import pytest

from bidsutils import gre_file, make_tiny_bids
from qsmprep import __version__
from qsmprep.cli.parser import get_parser
from qsmprep.cli.run import main
from qsmprep.config import METHODS, Config, default_stages, load_preset, mock_config
from qsmprep.errors import InputError


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"qsmprep {__version__}"


def test_parser_bids_app_arguments(tmp_path):
    opts = get_parser().parse_args([
        str(tmp_path), str(tmp_path / "out"), "participant", "--participant-label", "sub-01", "02",
        "--session-label", "ses-a", "-w", str(tmp_path / "w"), "--nprocs", "3", "--mem-gb", "4",
        "--plugin", "Linear", "--skip-bids-validation", "-vv", "--b0", "7",
    ])
    assert opts.participant_label == ["01", "02"] and opts.session_label == ["a"]
    assert opts.nprocs == 3 and opts.mem_gb == 4 and opts.plugin == "Linear" and opts.verbosity == 2
    assert opts.skip_bids_validation and opts.b0 == 7.0


@pytest.mark.parametrize("args", [
    [],
    ["{bids}", "{out}"],
    ["{bids}", "{out}", "everything"],
    ["{bids}", "{out}", "participant", "--nprocs", "0"],
    ["{missing}", "{out}", "participant"],
])
def test_parser_rejects(tmp_path, args, capsys):
    fmt = {"bids": str(tmp_path), "out": str(tmp_path / "o"), "missing": str(tmp_path / "nope")}
    with pytest.raises(SystemExit) as exc:
        main([a.format(**fmt) for a in args])
    assert exc.value.code == 2


def _run_error(argv, capsys):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("qsmprep: error:"), err
    return err


def _final_error(argv, capsys):
    """Exit 2 and the one-line error, after whatever progress was logged before it."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("qsmprep: error:")
    return err[-1]


def test_anatomy_options(tmp_path, capsys):
    from qsmprep.cli.run import build_config

    bids = make_tiny_bids(tmp_path / "bids")
    seg = tmp_path / "seg"
    seg.mkdir()
    opts = get_parser().parse_args([str(bids), str(tmp_path / "out"), "participant", "--template",
                                    "MNI152NLin6Asym", "--atlas", "HOSPA:th25", "HOCPAL:th25", "--segmentation-dir",
                                    str(seg), "--roi-erode", "1", "--sloppy"])
    anat = build_config(opts).anat
    assert anat.template == "MNI152NLin6Asym" and anat.atlases == ["HOSPA:th25", "HOCPAL:th25"]
    assert anat.segmentation_dir == str(seg) and anat.roi_erode == 1 and anat.sloppy and anat.coreg
    default = build_config(get_parser().parse_args([str(bids), str(tmp_path / "out"), "participant"])).anat
    assert default.template is None and default.atlases == [] and default.coreg
    out = tmp_path / "out"
    msg = _run_error([bids, out, "participant", "--atlas", "HOSPA:th25"], capsys)
    assert "--atlas needs --template" in msg
    msg = _run_error([bids, out, "participant", "--no-coreg", "--segmentation-dir", seg], capsys)
    assert "--no-coreg" in msg


def test_missing_template_stops_before_running_with_the_prefetch_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty_templateflow"))
    monkeypatch.setenv("QSMPREP_OFFLINE", "1")
    bids = make_tiny_bids(tmp_path / "bids")
    out = tmp_path / "out"
    msg = _final_error([bids, out, "participant", "-w", tmp_path / "w", "--template", "MNI152NLin2009cAsym"],
                       capsys)
    assert "qsmprep prefetch --template MNI152NLin2009cAsym" in msg
    assert not (tmp_path / "w" / "qsmprep_wf").exists()


def test_missing_segmentation_names_the_folder(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    seg = tmp_path / "seg"
    seg.mkdir()
    msg = _final_error([bids, tmp_path / "out", "participant", "--segmentation-dir", seg], capsys)
    assert str(seg) in msg and "sub-01" in msg


def test_prefetch_subcommand_dispatches(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty_templateflow"))
    monkeypatch.setenv("QSMPREP_OFFLINE", "1")
    assert main(["prefetch", "--template", "MNI152NLin2009cAsym", "--atlas", "HOSPA:th25"]) == 2
    assert "qsmprep prefetch" in capsys.readouterr().err


def test_output_equal_to_bids_dir(tmp_path, capsys):
    root = make_tiny_bids(tmp_path / "bids")
    err = _run_error([root, root, "participant", "-w", tmp_path / "w"], capsys)
    assert "must not be the BIDS dataset" in err


def test_output_inside_bids_dir(tmp_path, capsys):
    root = make_tiny_bids(tmp_path / "bids")
    err = _run_error([root, root / "sub-01" / "out", "participant", "-w", tmp_path / "w"], capsys)
    assert "derivatives/" in err


def test_work_dir_inside_bids_dir(tmp_path, capsys):
    root = make_tiny_bids(tmp_path / "bids")
    err = _run_error([root, tmp_path / "out", "participant", "-w", root / "work"], capsys)
    assert "work directory must not be inside" in err


@pytest.mark.parametrize("breakage, expected", [
    ("no_magnitude", "phase without magnitude"),
    ("echo_count", "echo count mismatch"),
    ("no_te", "EchoTime is missing"),
    ("no_b0", "MagneticFieldStrength is missing"),
    ("no_subject", "not found"),
])
def test_input_errors_exit_2_naming_the_file(tmp_path, capsys, breakage, expected):
    root = make_tiny_bids(tmp_path / "bids", b0=None if breakage == "no_b0" else 3.0)
    argv = [root, tmp_path / "out", "participant", "-w", tmp_path / "w"]
    if breakage == "no_magnitude":
        for f in (root / "sub-01" / "anat").glob("*part-mag*"):
            f.unlink()
    elif breakage == "echo_count":
        gre_file(root, echo=3, part="mag").unlink()
    elif breakage == "no_te":
        path = gre_file(root, echo=1, part="phase", ext=".json")
        path.write_text(json.dumps({"MagneticFieldStrength": 3}))
    elif breakage == "no_subject":
        argv += ["--participant-label", "09"]
    err = _run_error(argv, capsys)
    assert expected in err
    if breakage != "no_subject":
        assert "sub-01" in err and ".nii" in err


def test_group_level_needs_participant_outputs(tmp_path, capsys):
    root = make_tiny_bids(tmp_path / "bids")
    err = _run_error([root, tmp_path / "out", "group"], capsys)
    assert "run the participant level first" in err and str(tmp_path / "out") in err
    (tmp_path / "out").mkdir()
    err = _run_error([root, tmp_path / "out", "group"], capsys)
    assert "no *_desc-qc_metrics.json or *_desc-<atlas>_roistats.tsv" in err and str(tmp_path / "out") in err


def test_bad_preset(tmp_path, capsys):
    root = make_tiny_bids(tmp_path / "bids")
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"workflow": {"inversion": {"method": "magic"}}}))
    err = _run_error([root, tmp_path / "out", "participant", "--config", preset, "-w", tmp_path / "w"], capsys)
    assert "inversion method 'magic' is not one of" in err and "p.json" in err


def test_config_defaults_and_presets(tmp_path):
    cfg = Config()
    assert {k: s.method for k, s in cfg.workflow.stages.items()} == {
        k: v["method"] for k, v in default_stages().items()
    }
    assert all(v["method"] in METHODS[k] for k, v in default_stages().items())
    cfg = mock_config(inversion={"method": "tkd", "params": {"threshold": 0.25}}, unwrapping="skimage")
    assert cfg.workflow.stages["inversion"].params == {"threshold": 0.25}
    assert cfg.workflow.stages["unwrapping"].method == "skimage"
    cfg = mock_config(echo_strategy="per-echo")
    assert cfg.workflow.stages["combination"].method == "per-echo"
    with pytest.raises(InputError, match="unknown workflow setting"):
        mock_config(inverson="tkd")
    with pytest.raises(InputError, match="pad_voxels"):
        mock_config(pad_voxels=-1)
    toml = tmp_path / "p.toml"
    toml.write_text('[workflow.background]\nmethod = "vsharp"\nparams = {radius_max_mm = 8.0}\n')
    cfg = Config().update_workflow(load_preset(toml))
    assert cfg.workflow.stages["background"].params["radius_max_mm"] == 8.0
    broken = tmp_path / "bad.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="cannot parse"):
        load_preset(broken)
    assert json.loads(json.dumps(cfg.to_dict()))["workflow"]["stages"]["background"]["method"] == "vsharp"


def test_demo_refuses_to_overwrite_without_flag(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "keep.txt").write_text("x")
    rc = main(["demo", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--overwrite" in err and (tmp_path / "bids" / "keep.txt").is_file()


def test_plugin_args_validated(tmp_path, capsys):
    root = make_tiny_bids(tmp_path / "bids")
    base = [root, tmp_path / "out", "participant", "-w", tmp_path / "w"]
    err = _run_error([*base, "--plugin-args", '{"partition": "short"}'], capsys)
    assert "--plugin-args is for --plugin SLURM or SLURMGraph" in err
    err = _run_error([*base, "--plugin", "SLURM", "--plugin-args", '{"partitoin": "short"}'], capsys)
    assert "unknown --plugin-args key(s) ['partitoin']" in err
    err = _run_error([*base, "--plugin", "SLURM", "--plugin-args", "[1, 2"], capsys)
    assert "--plugin-args" in err
    from qsmprep.cli.slurm import load_plugin_args, sbatch_args

    yml = tmp_path / "slurm.yml"
    yml.write_text("partition: short\ntime: '01:00:00'\nsbatch_args: --exclusive\nmax_jobs: 20\n")
    args = load_plugin_args(str(yml))
    assert args["max_jobs"] == 20
    assert sbatch_args(args) == "--exclusive --partition=short --time=01:00:00"


def test_configuration_defaults_are_the_function_signatures():
    """One source of each default: config lists option names; the values are the signatures'."""
    import inspect

    from qsmprep.config import LISTED_OPTIONS, METHOD_DEFAULTS, PIPELINE_CHOICES, signature_defaults
    from qsmprep.qsm import echoes, inversion

    for (stage, method), names in LISTED_OPTIONS.items():
        assert method in METHODS[stage], (stage, method)
        own = signature_defaults(stage, method)
        choice = PIPELINE_CHOICES.get((stage, method), {})
        assert METHOD_DEFAULTS[(stage, method)] == {n: choice.get(n, own[n]) for n in names}
    # spot checks against the signatures themselves, not through the helpers
    assert METHOD_DEFAULTS[("inversion", "tkd")]["threshold"] == inspect.signature(inversion.tkd).parameters[
        "threshold"].default
    assert METHOD_DEFAULTS[("inversion", "medi")]["lambda_"] == inspect.signature(inversion.medi).parameters[
        "lambda_"].default
    assert METHOD_DEFAULTS[("r2star", "arlo")]["r2star_max"] == inspect.signature(echoes.r2star_map).parameters[
        "r2star_max"].default
    # the pipeline's departures from a function default are explicit, and really departures
    for (stage, method), params in PIPELINE_CHOICES.items():
        own = signature_defaults(stage, method)
        assert all(own[k] != v for k, v in params.items()), (stage, method, params)

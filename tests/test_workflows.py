"""Workflow graph smoke tests over the option grid (graphs are built, not run)."""

import itertools

import pytest

from bidsutils import make_tiny_bids
from qsmprep.bids import collect_gre
from qsmprep.config import METHODS, mock_config
from qsmprep.errors import InputError
from qsmprep.workflows.base import init_qsmprep_wf
from qsmprep.workflows.gre import GRE_OUTPUTS, init_gre_wf


def _node_names(wf):
    return {n.fullname.split(".")[-1] for n in wf._get_all_nodes()}


@pytest.mark.parametrize(
    "unwrapping, combination, background, inversion",
    list(itertools.product(METHODS["unwrapping"], METHODS["combination"], METHODS["background"],
                           METHODS["inversion"])),
)
def test_gre_wf_builds(unwrapping, combination, background, inversion):
    if (unwrapping, combination) == ("laplacian", "nonlinear"):
        with pytest.raises(InputError, match="nonlinear"):
            mock_config(unwrapping=unwrapping, combination=combination)
        return
    cfg = mock_config(unwrapping=unwrapping, combination=combination, background=background,
                      inversion=inversion, phase_offset="mcpc3ds")
    wf = init_gre_wf(echo_times=[0.004, 0.008, 0.012], b0=3.0, stages=cfg.workflow.stages,
                     echo_strategy=cfg.workflow.echo_strategy, shape=(64, 64, 40), omp_nthreads=2)
    names = _node_names(wf)
    assert {"load", "phase_offset", "unwrap", "fit_field", "r2star", "brain_mask", "background",
            "inversion", "reference"} <= names
    assert set(GRE_OUTPUTS) <= set(wf.get_node("outputnode").inputs.copyable_trait_names())
    assert wf.get_node("unwrap").interface.inputs.method == unwrapping
    assert wf.get_node("inversion").interface.inputs.method == inversion
    assert wf.get_node("inversion").n_procs == 2 and wf.get_node("inversion").mem_gb >= 0.25
    # only FFT-threaded unwrapping claims the threads; ROMEO's region growing runs on one core
    unwrap = wf.get_node("unwrap")
    assert unwrap.n_procs == unwrap.interface.inputs.num_threads == (2 if unwrapping == "laplacian" else 1)
    if combination == "per-echo":
        assert cfg.workflow.echo_strategy == "per-echo"


def test_the_chain_to_the_inversion_is_submitted_first():
    """Steps on the way to the inversion (the longest step) go first among those ready: a
    GRE→T1w registration that claims both cores no longer holds back the brain mask."""
    import numpy as np

    from qsmprep.cli.multiproc import OrphanSafeMultiProcPlugin
    from qsmprep.workflows import PRIORITY_ATTR

    cfg = mock_config()
    wf = init_gre_wf(echo_times=[0.004, 0.008, 0.012], b0=3.0, stages=cfg.workflow.stages, shape=(8, 8, 8))
    marked = {n.name for n in wf._get_all_nodes() if getattr(n, PRIORITY_ATTR, 0) > 0}
    assert marked == {"unwrap", "fit_field", "brain_mask", "background", "inversion"}
    plugin = OrphanSafeMultiProcPlugin(plugin_args={"n_procs": 2})
    try:
        plugin.procs = [wf.get_node("r2star"), wf.get_node("echo_average"), wf.get_node("brain_mask"),
                        wf.get_node("reference"), wf.get_node("background")]
        order = plugin._sort_jobs(np.arange(5))
    finally:
        plugin.pool.shutdown()
    assert list(order) == [2, 4, 0, 1, 3]  # marked first, each group in Nipype's (topological) order


def test_single_echo_has_no_r2star():
    cfg = mock_config()
    wf = init_gre_wf(echo_times=[0.02], b0=3.0, stages=cfg.workflow.stages, shape=(8, 8, 8))
    assert "r2star" not in _node_names(wf)
    assert wf.get_node("fit_field").interface.inputs.params["intercept"] is False


def test_memory_estimate_scales_with_data():
    cfg = mock_config()
    small = init_gre_wf(echo_times=[0.004, 0.008], b0=3.0, stages=cfg.workflow.stages, shape=(64, 64, 40))
    big = init_gre_wf(echo_times=[0.004] * 8, b0=3.0, stages=cfg.workflow.stages, shape=(224, 224, 144))
    assert big.get_node("load").mem_gb > small.get_node("load").mem_gb
    assert big.get_node("inversion").mem_gb > 1.0


def test_qsmprep_wf_one_subworkflow_per_participant(tmp_path):
    root = make_tiny_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    cfg = mock_config()
    cfg.execution.bids_dir, cfg.execution.output_dir = str(root), str(tmp_path / "out")
    cfg.execution.nprocs, cfg.execution.run_uuid = 3, "test"
    wf = init_qsmprep_wf(cfg, collect_gre(root))
    subs = sorted(n for n in wf.list_node_names() if n.startswith("single_subject"))
    assert {s.split(".")[0] for s in subs} == {f"single_subject_{s}_wf" for s in ("01", "02", "03")}
    # three participants share three processes: one thread each for FFT-heavy nodes
    inv = [n for n in wf._get_all_nodes() if n.name == "inversion"]
    assert len(inv) == 3 and all(n.n_procs == 1 for n in inv)
    from qsmprep.cli.progress import count_steps

    totals = count_steps(wf)
    # the participant's nodes except the identity (input/output) nodes Nipype removes before
    # running (the e2e re-run test checks that the last progress line reaches total/total)
    all_nodes = sum(1 for n in subs if n.startswith("single_subject_01_wf."))
    assert set(totals) == {"01", "02", "03"} and len(set(totals.values())) == 1
    assert 10 < totals["01"] < all_nodes


def test_csf_reference_needs_two_echoes():
    cfg = mock_config(reference="csf")
    init_gre_wf(echo_times=[0.004, 0.008], b0=3.0, stages=cfg.workflow.stages, shape=(8, 8, 8))
    with pytest.raises(InputError, match="at least two echoes"):
        init_gre_wf(echo_times=[0.02], b0=3.0, stages=cfg.workflow.stages, shape=(8, 8, 8))


def test_progress_reporter_counts_steps_per_participant():
    from types import SimpleNamespace

    from qsmprep.cli.progress import ProgressReporter

    now = [100.0]
    lines = []
    logger = SimpleNamespace(info=lambda fmt, *args: lines.append(fmt % args))
    rep = ProgressReporter({"01": 3, "02": 2}, clock=lambda: now[0], logger=logger)
    node = lambda sub, name: SimpleNamespace(_hierarchy=f"qsmprep_wf.single_subject_{sub}_wf.gre_wf", name=name)
    rep(node("01", "a"), "start")
    rep(node("02", "a"), "start")
    now[0] = 165.0
    rep(node("01", "a"), "end")
    rep(node("01", "b"), "start")
    rep(node("01", "b"), "exception")
    rep(SimpleNamespace(_hierarchy="qsmprep_wf", name="other"), "end")  # not a participant's step
    assert lines == ["progress sub-01: 1/3 steps done, 0 running, 0:01:05 elapsed",
                     "progress sub-01: 1/3 steps done, 0 running, 1 failed, 0:01:05 elapsed"]
    assert rep.line("02") == "progress sub-02: 0/2 steps done, 1 running, 0:01:05 elapsed"


def test_denoise_stage_feeds_every_magnitude_consumer_and_needs_echoes():
    cfg = mock_config(denoise="mppca", phase_offset="mcpc3ds")
    assert cfg.workflow.stages["denoise"].params == {"patch_radius": 2}
    wf = init_gre_wf(echo_times=[0.004, 0.008, 0.012], b0=3.0, stages=cfg.workflow.stages, shape=(8, 8, 8))
    graph = wf._graph
    denoise = wf.get_node("denoise")
    fed = {dst.name for _, dst, data in graph.out_edges(denoise, data=True)
           if ("magnitude", "magnitude") in data["connect"]}
    assert fed == {"unwrap", "fit_field", "echo_average", "r2star", "phase_offset"}
    load = wf.get_node("load")
    raw = {dst.name for _, dst, data in graph.out_edges(load, data=True)
           if any(src == "magnitude" for src, _ in data["connect"])}
    assert raw == {"denoise", "outputnode"}  # QC's magnitude4d is the measured one
    assert "denoise" not in _node_names(init_gre_wf(echo_times=[0.004, 0.008, 0.012], b0=3.0,
                                                    stages=mock_config().workflow.stages, shape=(8, 8, 8)))
    with pytest.raises(InputError, match="at least 3"):
        init_gre_wf(echo_times=[0.004, 0.008], b0=3.0, stages=cfg.workflow.stages, shape=(8, 8, 8))

"""Issue 16, "trust on real scanner data": damaged inputs, unwritable folders, environment
errors and bugs as one line each, file modes, no orphaned workers, quiet logs, honest --help."""

import errno
import gzip
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from bidsutils import gre_file, make_tiny_bids
from qsmprep.cli.run import main
from qsmprep.errors import InputError
from qsmprep.integrity import check_files, check_nifti

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _image(path, shape=(40, 40, 30), dtype=np.int16, seed=0, klass=nib.Nifti1Image):
    rng = np.random.default_rng(seed)
    data = rng.integers(-2000, 2000, size=shape).astype(dtype)  # noise: a long compressed stream
    path = Path(path)
    klass(data, np.eye(4)).to_filename(path)
    return path


def _zero_middle(path, n=64):
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + n] = bytes(n)
    path.write_bytes(bytes(raw))


def _one_error_line(argv, capsys, rc=2):
    """The exit status and the one-line error (after whatever progress was logged before it)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == rc, err
    lines = err.splitlines()
    assert lines[-1].startswith("qsmprep: ") and "Traceback" not in err, err
    assert all(" nipype." in ln for ln in lines[:-1]), err  # before it: log lines only
    return lines[-1]


# --- integrity of input files -------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_good_files_pass_both_modes(tmp_path, name):
    path = _image(tmp_path / name)
    for full in (True, False):
        hdr = check_nifti(path, full=full)
        assert hdr.get_data_shape() == (40, 40, 30)
    assert check_nifti(_image(tmp_path / "n2.nii.gz", klass=nib.Nifti2Image))["sizeof_hdr"] == 540


def test_multi_member_and_zero_padded_gzip_pass(tmp_path):
    """Valid gzip variants (pigz/mgzip-style members, zero padding) that nibabel reads."""
    plain = (_image(tmp_path / "a.nii")).read_bytes()
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(plain[:5000]) + gzip.compress(plain[5000:]))
    padded = tmp_path / "padded.nii.gz"
    padded.write_bytes(gzip.compress(plain) + bytes(100))
    for path in (multi, padded):
        assert np.array_equal(np.asarray(nib.load(path).dataobj), np.asarray(nib.load(tmp_path / "a.nii").dataobj))
        check_nifti(path, full=True)
        check_nifti(path, full=False)  # (the multi-member ISIZE differs: falls back to the stream)


def test_zeroed_bytes_in_the_gzip_stream_are_refused(tmp_path):
    path = _image(tmp_path / "sub-01_echo-1_part-phase_MEGRE.nii.gz")
    _zero_middle(path)
    assert nib.load(path).shape == (40, 40, 30)  # the header still reads: nibabel cannot tell
    with pytest.raises(InputError, match="gzip stream is corrupt") as exc:
        check_nifti(path)
    assert exc.value.path == str(path) and str(path) in str(exc.value)
    check_nifti(path, full=False)  # the cheap mode trusts header + size, by design


def test_crc_mismatch_is_refused(tmp_path):
    """A stream that inflates cleanly but whose CRC-32 disagrees (a flipped bit in stored data)."""
    plain = _image(tmp_path / "a.nii").read_bytes()
    comp = zlib.compressobj(0, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # stored blocks: bytes copied as is
    raw = bytearray(comp.compress(plain) + comp.flush())
    raw[len(raw) // 2] ^= 0x01
    path = tmp_path / "crc.nii.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="incorrect data check"):
        check_nifti(path)


@pytest.mark.parametrize("full", [True, False])
def test_truncated_gzip_is_refused(tmp_path, full):
    path = _image(tmp_path / "a.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated"):
        check_nifti(path, full=full)


@pytest.mark.parametrize("full", [True, False])
def test_truncated_nii_is_refused(tmp_path, full):
    path = _image(tmp_path / "a.nii")
    raw = path.read_bytes()
    path.write_bytes(raw[:-1])
    with pytest.raises(InputError, match=r"truncated: 96,351 bytes where its header needs 96,352"):
        check_nifti(path, full=full)


def test_gzip_of_a_complete_but_short_image_is_refused(tmp_path):
    """A valid gzip stream (CRC fine) that holds fewer bytes than the header declares."""
    plain = _image(tmp_path / "a.nii").read_bytes()
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(plain[:-100]))
    for full in (True, False):
        with pytest.raises(InputError, match="truncated"):
            check_nifti(path, full=full)


@pytest.mark.parametrize("content, name, expected", [
    (b"hello, this is not an image\n" * 20, "a.nii", "not a NIfTI file"),
    (gzip.compress(b"hello, this is not an image\n" * 20), "a.nii.gz", "not a NIfTI file"),
    (b"hello", "a.nii.gz", "not gzip-compressed"),
    (gzip.compress(b"x" * 400), "a.nii", "gzip-compressed but not named .gz"),
    (b"", "a.nii", "empty"),
], ids=["text", "gzipped-text", "named-gz-not-gzip", "gzip-named-nii", "empty"])
def test_not_nifti_is_refused(tmp_path, content, name, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        check_nifti(path)


def test_bad_headers_are_refused(tmp_path):
    raw = bytearray(_image(tmp_path / "a.nii").read_bytes())
    zero_offset = raw.copy()
    zero_offset[108:112] = np.float32(0).tobytes()  # nibabel would read the data from byte 0
    (tmp_path / "off.nii").write_bytes(bytes(zero_offset))
    with pytest.raises(InputError, match="vox_offset 0"):
        check_nifti(tmp_path / "off.nii")
    bad_magic = raw.copy()
    bad_magic[344:348] = b"xyz\0"
    (tmp_path / "magic.nii").write_bytes(bytes(bad_magic))
    with pytest.raises(InputError, match="not a NIfTI file"):
        check_nifti(tmp_path / "magic.nii")
    bad_dtype = raw.copy()
    bad_dtype[70:72] = np.int16(1234).tobytes()  # no such datatype code
    (tmp_path / "dtype.nii").write_bytes(bytes(bad_dtype))
    with pytest.raises(InputError, match="header nibabel cannot read"):
        check_nifti(tmp_path / "dtype.nii")


def test_unreadable_files_are_refused(tmp_path, monkeypatch):
    folder = tmp_path / "dir.nii.gz"
    folder.mkdir()
    with pytest.raises(InputError, match="cannot be read|not a regular file"):
        check_nifti(folder)
    with pytest.raises(InputError, match="cannot be read"):
        check_nifti(tmp_path / "missing.nii.gz")
    path = _image(tmp_path / "a.nii.gz")
    if not IS_ROOT:  # root reads files whatever their permission bits
        path.chmod(0)
        with pytest.raises(InputError, match="Permission denied"):
            check_nifti(path)
        path.chmod(0o644)
    import qsmprep.integrity as integrity

    def denied(p, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(integrity, "open", denied, raising=False)
    with pytest.raises(InputError, match=r"cannot be read \(Permission denied\)"):
        check_nifti(path)


def test_check_files_names_every_damaged_file(tmp_path):
    good = [_image(tmp_path / f"g{i}.nii.gz", seed=i) for i in range(3)]
    bad1, bad2 = _image(tmp_path / "b1.nii.gz"), _image(tmp_path / "b2.nii")
    _zero_middle(bad1)
    bad2.write_bytes(bad2.read_bytes()[:1000])
    headers = check_files([*good, good[0], None])
    assert sorted(headers) == sorted(str(p) for p in good)
    with pytest.raises(InputError) as exc:
        check_files([good[0], bad1, good[1], bad2], max_workers=2)
    msg = str(exc.value)
    assert msg.startswith("2 input files are damaged: ") and str(bad1) in msg and str(bad2) in msg
    assert str(good[0]) not in msg and len(exc.value.errors) == 2
    with pytest.raises(InputError) as exc:  # a single bad file: its own error
        check_files([good[0], bad1])
    assert exc.value.path == str(bad1)


@pytest.mark.parametrize("target", ["echo", "t1w"])
def test_damaged_input_stops_the_run_with_one_line(tmp_path, capsys, target):
    root = make_tiny_bids(tmp_path / "bids", shape=(24, 24, 20))
    path = gre_file(root, echo=2, part="phase") if target == "echo" else root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    _zero_middle(path, n=256)
    err = _one_error_line([root, tmp_path / "out", "participant", "-w", tmp_path / "w"], capsys)
    assert err.startswith("qsmprep: error:") and str(path) in err and "gzip stream is corrupt" in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "out").exists()  # refused up front, no litter


# --- output and work folders, environment errors, bugs -----------------------------------

@pytest.mark.parametrize("which, layout", [
    ("output", "file"), ("output", "under_file"), ("work", "file"), ("work", "under_file"),
])
def test_unusable_output_or_work_folder_is_one_line(tmp_path, capsys, which, layout):
    root = make_tiny_bids(tmp_path / "bids")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file in the way")
    folder = blocker if layout == "file" else blocker / "sub" / "dir"
    out, work = (folder, tmp_path / "w") if which == "output" else (tmp_path / "out", folder)
    err = _one_error_line([root, out, "participant", "-w", work], capsys)
    assert str(folder) in err and (f"{which} folder" in err)
    assert blocker.read_text() == "a file in the way"


def test_unwritable_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """The probe file cannot be created (read-only mount, permissions, full disk)."""
    root = make_tiny_bids(tmp_path / "bids")
    out = tmp_path / "out"
    out.mkdir()
    if not IS_ROOT:  # root ignores the permission bits: simulate with a failing probe instead
        out.chmod(0o555)
        try:
            err = _one_error_line([root, out, "participant", "-w", tmp_path / "w"], capsys)
        finally:
            out.chmod(0o755)
        assert "output folder is not writable" in err and str(out) in err
    import qsmprep.cli.checks as checks

    real = checks.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(checks.tempfile, "mkstemp", read_only)
    err = _one_error_line([root, out, "participant", "-w", tmp_path / "w"], capsys)
    assert f"{out}: the output folder is not writable (Read-only file system)" in err
    assert not (tmp_path / "w" / "qsmprep_wf").exists()


def test_empty_dataset_is_one_line(tmp_path, capsys):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "empty", "BIDSVersion": "1.9.0"}))
    err = _one_error_line([root, tmp_path / "out", "participant", "-w", tmp_path / "w"], capsys)
    assert str(root) in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


def test_oserror_anywhere_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    root = make_tiny_bids(tmp_path / "bids")
    import qsmprep.cli.run as run

    def full_disk(config):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.nii.gz"))

    monkeypatch.setattr(run, "run_participant", full_disk)
    err = _one_error_line([root, tmp_path / "out", "participant"], capsys)
    assert err == f"qsmprep: error: {tmp_path / 'out' / 'x.nii.gz'}: No space left on device (disk full?)"

    def denied(config):
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/file")

    monkeypatch.setattr(run, "run_participant", denied)
    assert _one_error_line([root, tmp_path / "out", "participant"], capsys) == \
        "qsmprep: error: /somewhere/file: Permission denied"


def test_environment_errors_inside_nodes_are_one_line(tmp_path):
    from qsmprep.cli.errors import _environment_errors_from_crashes

    (tmp_path / "crash-1.txt").write_text(
        "Traceback (most recent call last):\n  File x\n"
        "OSError: [Errno 28] No space left on device: '/out/sub-01/anat/chi.nii.gz'\n")
    (tmp_path / "crash-2.txt").write_text("ValueError: a bug\nOSError: [Errno 2] No such file: '/x'\n")
    assert _environment_errors_from_crashes([tmp_path]) == ["/out/sub-01/anat/chi.nii.gz: No space left on device"]


def test_internal_error_is_one_line_with_a_crash_file(tmp_path, capsys, monkeypatch):
    root = make_tiny_bids(tmp_path / "bids")
    import qsmprep.workflows.base as base

    def bug(config, records):
        raise ZeroDivisionError("a bug in the workflow builder")

    monkeypatch.setattr(base, "init_qsmprep_wf", bug)
    out = tmp_path / "out"
    err = _one_error_line([root, out, "participant", "-w", tmp_path / "w"], capsys, rc=1)
    match = re.fullmatch(r"qsmprep: internal error \(ZeroDivisionError: a bug in the workflow builder\); "
                         r"traceback written to (\S+)", err)
    assert match, err
    crash = Path(match.group(1))
    assert crash.is_file() and (out / "log") in crash.parents
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text and "in bug" in text and "ZeroDivisionError" in text


def _fails(x):
    raise ValueError(f"a step failed on {x}")


def test_failed_step_is_one_line_and_no_traceback_is_printed(tmp_path, capfd, monkeypatch):
    """A node's failure: rc 1, one line naming the crash reports; Nipype's logged traceback
    is cut (the crash file keeps it)."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    import qsmprep.workflows.base as base

    def tiny(config, records):
        wf = pe.Workflow(name="qsmprep_wf")
        sub = pe.Workflow(name="single_subject_01_wf")
        step = pe.Node(Function(input_names=["x"], output_names=["y"], function=_fails), name="step")
        step.inputs.x = 1
        sub.add_nodes([step])
        wf.add_nodes([sub])
        return wf

    monkeypatch.setattr(base, "init_qsmprep_wf", tiny)
    root = make_tiny_bids(tmp_path / "bids")
    rc = main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), "--nprocs", "1"])
    out, err = capfd.readouterr()
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("qsmprep: error: processing failed (ValueError: a step failed on 1)"), last
    assert "Traceback" not in out + err and "Saving crash info to" in out + err
    crashes = list((tmp_path / "out" / "log").rglob("crash-*.txt"))
    assert crashes and "Traceback" in crashes[0].read_text()


# --- file modes ----------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from qsmprep.cli.run import write_dataset_description
    from qsmprep.config import Config
    from qsmprep.interfaces.derivatives import DerivativesSink, atomic_write_text, write_json, write_nifti

    src = _image(tmp_path / "src.nii.gz", shape=(4, 4, 4))
    mat = tmp_path / "x.mat"
    mat.write_bytes(b"\0" * 64)
    old = os.umask(umask)
    try:
        out = tmp_path / f"out{umask:o}"
        written = [write_json(out / "a.json", {"a": 1}), atomic_write_text(out / "b.tsv", "x\ty\n"),
                   write_nifti(src, out / "c.nii.gz", np.float32)]
        config = Config()
        config.execution.bids_dir = str(tmp_path)
        write_dataset_description(out, config)
        written.append(out / "dataset_description.json")
        for ext, in_file in ((".nii.gz", src), (".mat", mat)):
            res = DerivativesSink(in_file=str(in_file), out_dir=str(out), entities={"subject": "01"},
                                  suffix="Chimap" if ext != ".mat" else "xfm", extension=ext).run()
            written.append(Path(res.outputs.out_file))
            if ext == ".nii.gz":
                written.append(Path(res.outputs.out_meta))
    finally:
        os.umask(old)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {oct(mode)}, modes
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"


# --- no orphaned workers -------------------------------------------------------------------

def _proc_children(pid):
    """Direct children of ``pid`` from /proc (psutil-free)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def _descendants(pid):
    out, todo = [], [pid]
    while todo:
        for kid in _proc_children(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_die_when_the_main_process_is_killed(tmp_path):
    from qsmprep.demo import write_demo_dataset

    write_demo_dataset(tmp_path / "demo", size="small", n_subjects=1)
    cmd = [sys.executable, "-c", "import sys; from qsmprep.cli.run import main; sys.exit(main())",
           str(tmp_path / "demo" / "bids"), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
           "--nprocs", "2", "--no-coreg", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _descendants(proc.pid)
            if len(workers) >= 2:
                break
            time.sleep(0.1)
        assert len(workers) >= 2, f"no worker processes appeared (rc {proc.poll()})"
        time.sleep(0.5)  # let the workers get busy with a node
        workers = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        left = [p for p in workers if _alive(p)]
        assert not left, f"orphaned workers after kill -9 of the main process: {left}"
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.stderr.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_worker_initializer_sets_pdeathsig_and_exits_if_parent_already_gone(tmp_path):
    import ctypes

    from qsmprep.cli.multiproc import PR_GET_PDEATHSIG, worker_initializer

    def in_child(parent_pid):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: as a pool worker would
            try:
                os.close(read)
                worker_initializer(str(tmp_path), parent_pid)
                sig = ctypes.c_int(0)
                ctypes.CDLL(None).prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
                os.write(write, str(sig.value).encode())
            finally:
                os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as fh:
            return os.waitstatus_to_exitcode(status), fh.read()

    assert in_child(os.getpid()) == (0, str(int(signal.SIGKILL)))
    assert in_child(os.getpid() + 999999) == (1, "")  # "the parent died before prctl": exit


# --- logging, progress, --help -------------------------------------------------------------

@pytest.fixture
def records():
    """Records reaching the ``nipype`` logger (as Nipype's own handler would print them)."""
    got = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append((record.name, record.levelname, record.getMessage()))

    handler = Keep()
    logging.getLogger("nipype").addHandler(handler)
    yield got
    logging.getLogger("nipype").removeHandler(handler)
    from qsmprep.cli.logs import _setup_logging

    _setup_logging(0)


@pytest.mark.parametrize("verbosity, expected", [
    (-1, {"error"}),
    (0, {"progress", "warning", "error"}),
    (1, {"progress", "warning", "error", "info", "interface info"}),
    (2, {"progress", "warning", "error", "info", "interface info", "debug"}),
])
def test_verbosity_levels(records, verbosity, expected):
    from qsmprep.cli.progress import PROGRESS_LOGGER
    from qsmprep.cli.logs import _setup_logging

    _setup_logging(verbosity)
    wf = logging.getLogger("nipype.workflow")
    wf.debug("debug")
    wf.info("info")
    logging.getLogger("nipype.interface").info("interface info")
    wf.warning("warning")  # qsmprep's own warnings use this logger
    wf.error("error")
    PROGRESS_LOGGER.info("progress")
    assert {msg for _, _, msg in records} == expected


def test_progress_running_count_follows_multiproc_callback_order():
    """The order Nipype 1.11's MultiProc reports (see qsmprep.cli.progress)."""
    from qsmprep.cli.progress import ProgressReporter

    lines = []
    rep = ProgressReporter({"01": 7}, clock=lambda: 0.0,
                           logger=SimpleNamespace(info=lambda fmt, *a: lines.append(fmt % a)))
    node = lambda name: SimpleNamespace(_hierarchy="qsmprep_wf.single_subject_01_wf.gre_sub01_wf", name=name)
    running = lambda: int(re.search(r"(\d+) running", rep.line("01")).group(1))
    rep(node("cached"), "end")  # cached: "end" only
    assert running() == 0
    rep(node("unwrap"), "start")  # submitted to a worker
    rep(node("mask"), "start")
    assert running() == 2
    rep(node("ds_mask"), "end")  # run_without_submitting: "end" only, runs in the main process
    assert running() == 2, "a step run in the main process must not end a worker's step"
    rep(node("mask"), "end")
    assert running() == 1
    rep(node("ds_meta"), "exception")  # a failed run_without_submitting node: exception, then end
    rep(node("ds_meta"), "end")
    rep(node("unwrap"), "exception")  # a failed submitted node: exception only
    assert lines == [
        "progress sub-01: 1/7 steps done, 0 running, 0:00:00 elapsed",
        "progress sub-01: 2/7 steps done, 2 running, 0:00:00 elapsed",
        "progress sub-01: 3/7 steps done, 1 running, 0:00:00 elapsed",
        "progress sub-01: 3/7 steps done, 1 running, 1 failed, 0:00:00 elapsed",
        "progress sub-01: 3/7 steps done, 0 running, 2 failed, 0:00:00 elapsed",
    ]


def test_progress_deferred_lines_count_the_steps_started_in_the_same_pass():
    """MultiProc collects finished tasks before submitting: the lines wait for the pass to end."""
    from qsmprep.cli.multiproc import OrphanSafeMultiProcPlugin
    from qsmprep.cli.progress import ProgressReporter

    lines = []
    rep = ProgressReporter({"01": 4}, clock=lambda: 0.0,
                           logger=SimpleNamespace(info=lambda fmt, *a: lines.append(fmt % a)))
    plugin = OrphanSafeMultiProcPlugin(plugin_args={"n_procs": 1, "status_callback": rep})
    try:
        assert rep.defer
    finally:
        plugin.pool.shutdown()
    node = lambda name: SimpleNamespace(_hierarchy="qsmprep_wf.single_subject_01_wf", name=name)
    rep(node("a"), "start")
    rep.flush()
    rep(node("a"), "end")      # pass 2: "a" collected ...
    rep(node("ds_a"), "end")   # ... its local sink run ...
    rep(node("b"), "start")    # ... and "b" submitted
    assert lines == []
    rep.flush()
    rep(node("b"), "end")
    rep.flush()
    assert [ln.split(", 0:")[0] for ln in lines] == [
        "progress sub-01: 1/4 steps done, 1 running", "progress sub-01: 2/4 steps done, 1 running",
        "progress sub-01: 3/4 steps done, 0 running"]


def test_progress_lines_show_by_default_and_go_through_nipype_workflow(records):
    from qsmprep.cli.progress import ProgressReporter
    from qsmprep.cli.logs import _setup_logging

    _setup_logging(0)
    rep = ProgressReporter({"01": 2})
    rep(SimpleNamespace(_hierarchy="qsmprep_wf.single_subject_01_wf", name="a"), "end")
    assert [(n, m.split(",")[0]) for n, _, m in records] == [
        ("nipype.workflow.progress", "progress sub-01: 1/2 steps done")]


@pytest.mark.parametrize("which", ["main", "demo"])
def test_help_shows_only_true_defaults(which):
    from qsmprep.cli.parser import get_demo_parser, get_parser

    text = " ".join((get_parser() if which == "main" else get_demo_parser()).format_help().split())
    assert "default: None" not in text
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "(default: [])" not in text and "(default: 0)" not in text  # -v's count
    assert not re.search(r"\(default:? [^)]*\)[^(]{0,3}\(default", text), text
    assert "-q, --quiet" in text
    if which == "main":
        assert "(default: 1)" in text  # --nprocs: a real default is still shown
        assert re.search(r"--work-dir WORK_DIR work directory \(default: ./work", text)
        assert text.count("(default 0)") == 1 and "(default 0) (default" not in text
    else:
        assert "(default: small)" in text and "(default: 2)" in text


def test_quiet_and_verbose_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "/tmp/x", "-q", "-v"])
    assert exc.value.code == 2

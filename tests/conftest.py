"""Shared pytest fixtures and scheduling.

Phantoms are deterministic, so each is generated once per test run: once per process, and
under pytest-xdist (``-n 2``, set in setup.cfg) once for all workers, through a pickle in
the run's shared temporary folder guarded by a file lock.

The suite runs on two xdist workers with ``--dist loadfile`` (a module's tests and module
fixtures stay on one worker, so e.g. the e2e demo runs once); the slowest modules are
started first (:data:`SLOWEST_FIRST`) so that the two workers finish together.
"""

import os
import pickle

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

#: Test modules by decreasing run time on the 2-core CI machine (``--durations``); the rest
#: keep their order after these.
SLOWEST_FIRST = (
    "test_qsm_inversion.py", "test_pipeline_accuracy.py", "test_e2e.py", "test_slurm.py", "test_dicom2bids.py",
    "test_chisep.py", "test_anat_workflows.py", "test_real_data.py", "test_resume.py", "test_qsm_masking.py",
    "test_lesions.py", "test_qsm_background.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: module order kept


def _once(request, tmp_path_factory, name, make):
    """``make()``, computed by one process of the run and shared with the other xdist workers."""
    if not hasattr(request.config, "workerinput"):  # a plain (non-xdist) run
        return make()
    from filelock import FileLock

    path = tmp_path_factory.getbasetemp().parent / f"shared-{name}.pkl"
    with FileLock(f"{path}.lock"):
        if path.is_file():
            with path.open("rb") as f:
                return pickle.load(f)
        obj = make()
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        return obj


@pytest.fixture(scope="session")
def small_phantom():
    from qsmprep.demo import make_phantom

    return make_phantom("small", seed=0)


@pytest.fixture(scope="session")
def small_gre(small_phantom):
    """(complex signal (x, y, z, echo), phase offset) of the small phantom at SNR 100."""
    from qsmprep.demo import simulate_gre

    return simulate_gre(small_phantom, snr=100.0, seed=0)


@pytest.fixture(scope="session")
def full_phantom(request, tmp_path_factory):
    from qsmprep.demo import make_phantom

    return _once(request, tmp_path_factory, "full_phantom", lambda: make_phantom("full", seed=0))


@pytest.fixture(scope="session")
def full_gre(request, tmp_path_factory, full_phantom):
    from qsmprep.demo import simulate_gre

    return _once(request, tmp_path_factory, "full_gre", lambda: simulate_gre(full_phantom, snr=100.0, seed=0))

"""Shared pytest fixtures: phantoms are generated once per session (they are deterministic)."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


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
def full_phantom():
    from qsmprep.demo import make_phantom

    return make_phantom("full", seed=0)


@pytest.fixture(scope="session")
def full_gre(full_phantom):
    from qsmprep.demo import simulate_gre

    return simulate_gre(full_phantom, snr=100.0, seed=0)

"""Shared fixtures: backends to test, GPU skipping, hypothesis profiles."""
import os

import pytest
from hypothesis import HealthCheck, settings

from sketchlib.backends import available_backends

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def cuda_usable():
    """True when CuPy imports and sees a CUDA device."""
    return "cupy" in available_backends()


def pytest_collection_modifyitems(config, items):
    if cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


HOST_BACKENDS = [b for b in ("numpy", "numba") if b in available_backends()]


@pytest.fixture(params=HOST_BACKENDS)
def host_backend(request):
    """Every usable CPU backend."""
    return request.param


@pytest.fixture(params=[b for b in ("numba", "cupy") if b in available_backends()])
def fast_backend(request):
    """Every usable non-reference backend (compared against numpy)."""
    return request.param

"""The public registry: registration, recognition of arrays, errors, the host-read counter."""
import types

import numpy as np
import pytest

import _toy_backend
from sketchlib import CountSketch, SerializationError, SketchError, backends
from sketchlib.backends import (BackendUnavailable, UnknownBackend, UnsupportedArray, auto_backend,
                                available_backends, backend_for_array, count_host_transfers, get_backend,
                                register_backend, registered_backends, unregister_backend)


@pytest.fixture
def scratch_names():
    """Backend names registered by a test, removed afterwards."""
    names = []
    yield names
    for name in names:
        if name in registered_backends():
            unregister_backend(name)


def test_errors_are_sketch_errors_and_keep_their_builtin_kinds(scratch_names):
    with pytest.raises(UnknownBackend, match="unknown backend 'tpu'") as info:
        CountSketch(10, 1, 1, backend="tpu")
    with pytest.raises(UnknownBackend):
        CountSketch(10, 1, 1).to("tpu")
    assert isinstance(info.value, SketchError) and isinstance(info.value, ValueError)
    with pytest.raises(UnsupportedArray, match="list") as info:
        backend_for_array([1.0, 2.0])
    assert isinstance(info.value, SketchError) and isinstance(info.value, TypeError)
    def missing():
        raise ImportError("no module named 'tpulib'")
    register_backend("tpu", missing, array_library="tpulib", install_hint="pip install tpulib")
    scratch_names.append("tpu")
    assert "tpu" in registered_backends() and "tpu" not in available_backends()
    with pytest.raises(BackendUnavailable, match="pip install tpulib") as info:
        CountSketch(10, 1, 1, backend="tpu")
    assert isinstance(info.value, SketchError) and isinstance(info.value, ImportError)


def test_from_bytes_reports_a_bad_backend_as_such_not_as_corrupt_bytes():
    data = CountSketch(10, 2, 8, backend="numpy").to_bytes()
    with pytest.raises(UnknownBackend) as info:
        CountSketch.from_bytes(data, backend="tpu")
    assert not isinstance(info.value, SerializationError)


def test_a_module_missing_contract_functions_is_refused_by_name(scratch_names):
    half = types.ModuleType("half")
    half.NAME, half.ARRAY_LIBRARY, half.available = "half", "numpy", lambda: True
    register_backend("half", half, array_library="numpy")
    scratch_names.append("half")
    with pytest.raises(SketchError, match="missing .*insert_dense"):
        get_backend("half")


def test_bad_registrations(scratch_names):
    with pytest.raises(SketchError, match="already registered"):
        register_backend("numpy", _toy_backend, array_library="numpy")
    for name in ("", "auto", 3):
        with pytest.raises(SketchError, match="name"):
            register_backend(name, _toy_backend, array_library="numpy")
    with pytest.raises(SketchError, match="array_library"):
        register_backend("x", _toy_backend, array_library="")
    with pytest.raises(SketchError, match="priority"):
        register_backend("x", _toy_backend, array_library="numpy", priority=1.5)
    register_backend("liar", _toy_backend, array_library="numpy")      # its module says NAME = "toy"
    scratch_names.append("liar")
    with pytest.raises(SketchError, match="NAME='toy'"):
        get_backend("liar")
    with pytest.raises(UnknownBackend):
        unregister_backend("never-registered")


def test_priority_decides_auto_and_array_dispatch(scratch_names):
    before = (auto_backend(), backend_for_array(np.zeros(1)))
    assert "toy" in available_backends() and available_backends().index("toy") == len(available_backends()) - 1
    loaded = []

    def loader():
        loaded.append(1)
        return _toy_backend
    register_backend("toy", loader, array_library="numpy", priority=1000, replace=True)
    try:
        assert loaded == []                                            # loaded on first use only
        assert auto_backend() == "toy" and backend_for_array(np.zeros(1)) == "toy"
        assert CountSketch(10, 2, 4).backend == "toy" and loaded == [1]
        assert CountSketch.from_table(np.zeros((2, 4), np.float32), 10).backend == "toy"
    finally:
        register_backend("toy", "_toy_backend", array_library="numpy", priority=-10, replace=True)
    assert (auto_backend(), backend_for_array(np.zeros(1))) == before
    assert get_backend("toy") is _toy_backend                          # dotted-path loader


def test_arrays_are_recognised_by_their_module_only():
    assert backends.array_library_of(np.zeros(2)) == "numpy"
    assert backends.is_array_of(np.zeros(2), "numpy") and not backends.is_array_of(np.zeros(2), "cupy")
    fake = type("ndarray", (), {"__module__": "cupy._core.core", "shape": (), "dtype": None})()
    assert backends.array_library_of(fake) == "cupy" and backends.is_array_of(fake, "cupy")
    assert not backends.is_array_of([1], "builtins")


def test_counters_nest_and_stop_counting_when_closed():
    sk = CountSketch(100, 2, 8, backend="numpy")
    x = np.ones(100)
    with count_host_transfers() as outer:
        sk.insert(x)
        with count_host_transfers() as inner:
            sk.insert(x)
            sk.query(np.array([1, 2]))
    sk.insert(x)
    assert (outer.count, inner.count) == (3, 2)
    assert inner.nbytes == 16 + 16             # abs_stats: two float64 (sum |x|, max |T|); two int64 bounds

"""adapters.dlpack: any DLPack producer in, DLPack producers out, zero copy, clear refusals."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters import dlpack as ad
from sketchlib import BackendUnavailable, CountSketch, SketchError, available_backends

D, ROWS, COLS = 400, 4, 32


class Foreign:
    """An array from a library sketchlib has never heard of: it only speaks DLPack."""

    def __init__(self, array, device=None):
        self._array = array
        self._device = device

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._device or self._array.__dlpack_device__()


def _ptr(array):
    return array.__array_interface__["data"][0]


def test_numpy_arrays_pass_through_and_foreign_ones_share_memory():
    x = np.arange(5, dtype=np.float32)
    assert ad.as_array(x) is x
    y = ad.as_array(Foreign(x))
    assert isinstance(y, np.ndarray) and np.shares_memory(x, y)
    assert ad.device_of(Foreign(x)) == "cpu"


def test_non_dlpack_objects_are_refused():
    with pytest.raises(SketchError, match="DLPack"):
        ad.as_array([1.0, 2.0])
    with pytest.raises(SketchError, match="DLPack"):
        ad.insert(CountSketch(D, ROWS, COLS, backend="numpy"), "abc")


@pytest.mark.parametrize("code, name", [(8, "metal:0"), (10, "rocm:0"), (7, "vulkan:0")])
def test_unsupported_devices_are_refused(code, name):
    x = Foreign(np.zeros(3, np.float32), device=(code, 0))
    with pytest.raises(SketchError, match=name):
        ad.as_array(x)
    with pytest.raises(SketchError, match="only CPU and CUDA"):
        ad.backend_for(x)


def test_cuda_array_without_usable_cupy_says_what_is_missing():
    if "cupy" in available_backends():
        pytest.skip("CuPy can use a CUDA device here")
    x = Foreign(np.zeros(3, np.float32), device=(2, 0))
    assert ad.device_of(x) == "cuda:0"
    for call in (ad.as_array, ad.backend_for, lambda a: ad.new_sketch_like(a, 1, 4)):
        with pytest.raises(BackendUnavailable, match="CuPy"):
            call(x)


def test_read_only_buffers_are_refused_only_where_written():
    table = np.zeros((ROWS, COLS), np.float32)
    table.flags.writeable = False
    view = ad.as_array(Foreign(table))
    assert not view.flags.writeable and np.shares_memory(view, table)
    with pytest.raises(SketchError, match="read-only"):
        ad.as_array(Foreign(table), writable=True)
    with pytest.raises(SketchError, match="read-only"):
        ad.sketch_from_table(Foreign(table), D)
    with pytest.raises(SketchError, match="read-only"):
        ad.sketch_from_table(table, D)
    # reading from a read-only input is fine
    x = np.ones(D, np.float32)
    x.flags.writeable = False
    s = ad.insert(CountSketch(D, ROWS, COLS, backend="numpy"), Foreign(x))
    assert s.l2_estimate() > 0


def test_foreign_input_matches_numpy_path(host_backend):
    x = np.random.default_rng(0).standard_normal(D).astype(np.float32)
    s = ad.insert(CountSketch(D, ROWS, COLS, seed=2, backend=host_backend), Foreign(x))
    ref = CountSketch(D, ROWS, COLS, seed=2, backend="numpy").insert(x)
    np.testing.assert_allclose(s.table, ref.table, rtol=1e-5, atol=1e-5)
    idx = np.array([1, 50, 399])
    np.testing.assert_allclose(ad.query(s, Foreign(idx)), ref.query(idx), rtol=1e-5, atol=1e-5)
    sparse = ad.insert_sparse(s.empty_like(), Foreign(idx), Foreign(x[idx].copy()))
    dense = np.zeros(D, np.float32)
    dense[idx] = x[idx]
    np.testing.assert_allclose(sparse.table, s.empty_like().insert(dense).table, rtol=1e-6)
    stack = np.stack([x, 2 * x])
    np.testing.assert_allclose(ad.insert_batch(s.empty_like(), Foreign(stack)).table, 3 * ref.table,
                               rtol=1e-4, atol=1e-4)


def test_export_table_shares_memory_with_numpy_consumers(host_backend):
    s = CountSketch(D, ROWS, COLS, backend=host_backend)
    view = np.from_dlpack(ad.export_table(s))
    assert np.shares_memory(view, s.table)
    view += 2.0
    assert float(s.table.sum()) == 2.0 * ROWS * COLS
    exp = ad.export_table(s)
    assert exp.shape == (ROWS, COLS) and exp.device == "cpu" and exp.dtype == np.float32
    with pytest.raises(SketchError, match="CountSketch"):
        ad.export_table(np.zeros(3))


def test_new_sketch_like_and_round_trip_through_the_table(host_backend):
    x = Foreign(np.ones(D, np.float64))
    s = ad.new_sketch_like(x, ROWS, COLS, seed=3)
    assert (s.d, s.dtype, s.device) == (D, np.float64, "cpu")
    ad.insert(s, x)
    again = ad.sketch_from_table(ad.export_table(s), D, seed=3)
    assert np.shares_memory(again.table, s.table)
    np.testing.assert_array_equal(again.query(np.arange(D)), s.query(np.arange(D)))
    assert ad.new_sketch_like(Foreign(np.ones(3, np.float16)), 1, 4).dtype == np.float32


@given(dtype=st.sampled_from(["float16", "float32", "float64", "int32", "int64", "uint8"]),
       shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       step=st.integers(1, 3))
def test_as_array_is_a_zero_copy_view_for_any_strides(dtype, shape, step):
    base = np.arange(int(np.prod(shape)) * step, dtype=dtype).reshape(*shape[:-1], shape[-1] * step)
    x = base[..., ::step]
    y = ad.as_array(Foreign(x))
    assert y.dtype == x.dtype and y.shape == x.shape and y.strides == x.strides
    assert np.shares_memory(x, y) and np.array_equal(x, y)


# ------------------------------------------------------------------- torch CPU
try:
    import torch
except ImportError:  # the NumPy-only tests above still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


@needs_torch
def test_torch_tensors_in_numpy_arrays_out_zero_copy(host_backend):
    t = torch.randn(D)
    s = ad.insert(CountSketch(D, ROWS, COLS, backend=host_backend), t)
    ref = CountSketch(D, ROWS, COLS, backend="numpy").insert(t.numpy())
    np.testing.assert_allclose(s.table, ref.table, rtol=1e-5, atol=1e-5)
    assert _ptr(ad.as_array(t)) == t.data_ptr()
    idx, vals = ad.topk(s, 7)
    back = torch.from_dlpack(vals)
    assert back.data_ptr() == _ptr(vals)
    table = torch.from_dlpack(ad.export_table(s))
    assert table.data_ptr() == _ptr(s.table)
    u = ad.unsketch(s, 7)
    np.testing.assert_allclose(u[idx], vals)
    est = ad.estimate_all(s)
    hi, hv = ad.heavy_hitters(s, float(np.abs(vals).min()))
    assert set(idx.tolist()) <= set(hi.tolist())
    np.testing.assert_allclose(est[hi], hv)


@needs_torch
def test_torch_unsupported_dtypes_and_grad_are_clear():
    s = CountSketch(D, ROWS, COLS, backend="numpy")
    with pytest.raises(SketchError, match="dtype"):
        ad.insert(s, torch.ones(D, dtype=torch.bfloat16))
    with pytest.raises(SketchError, match="detach"):
        ad.insert(s, torch.ones(D, requires_grad=True))
    with pytest.raises(SketchError, match="floating"):
        ad.insert(s, torch.ones(D, dtype=torch.int64))
    assert float(np.abs(s.table).sum()) == 0.0


README_EXAMPLE = textwrap.dedent("""
    import sys
    import numpy as np
    from adapters import dlpack
    from sketchlib import CountSketch

    class Producer:  # stands for any DLPack producer (JAX, TensorFlow, ...)
        def __init__(self, a): self.a = a
        def __dlpack__(self, **kw): return self.a.__dlpack__(**kw)
        def __dlpack_device__(self): return self.a.__dlpack_device__()

    g = np.zeros(10_000, np.float32); g[[3, 77, 4096]] = [5.0, -4.0, 3.0]
    x = Producer(g)
    sketch = dlpack.new_sketch_like(x, rows=5, cols=512)
    dlpack.insert(sketch, x)
    idx, vals = dlpack.topk(sketch, 3)            # NumPy arrays: DLPack producers too
    table = np.from_dlpack(dlpack.export_table(sketch))   # zero-copy view of the table
    assert sorted(idx.tolist()) == [3, 77, 4096] and np.shares_memory(table, sketch.table)
    assert "torch" not in sys.modules
""")


def test_readme_example_runs_without_torch():
    subprocess.run([sys.executable, "-c", README_EXAMPLE], check=True, timeout=120)


# ------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@needs_torch
def test_cuda_producers_become_cupy_arrays_zero_copy():
    import cupy
    t = torch.randn(D, device="cuda")
    a = ad.as_array(t)
    assert isinstance(a, cupy.ndarray) and a.data.ptr == t.data_ptr()
    s = ad.new_sketch_like(t, ROWS, COLS, seed=1)
    assert s.backend == "cupy"
    ad.insert(s, t)
    ref = CountSketch(D, ROWS, COLS, seed=1, backend="numpy").insert(t.cpu().numpy())
    np.testing.assert_allclose(cupy.asnumpy(s.table), ref.table, rtol=1e-4, atol=1e-4)
    table = torch.from_dlpack(ad.export_table(s))
    assert table.is_cuda and table.data_ptr() == s.table.data.ptr
    assert ad.as_array(s.table, writable=True) is s.table
    with pytest.raises(SketchError, match="numpy"):
        ad.insert(s, np.zeros(D, np.float32))


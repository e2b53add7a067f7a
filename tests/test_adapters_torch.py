"""adapters.torch: zero-copy tensor hand-off, results as tensors, model flattening."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from adapters import torch as at  # noqa: E402
from sketchlib import CountSketch, SketchError  # noqa: E402

D, ROWS, COLS = 500, 5, 64


def _numpy_twin(sketch):
    """A sketch with the same parameters on the reference backend."""
    return CountSketch(sketch.d, sketch.rows, sketch.cols, seed=sketch.seed, dtype=sketch.dtype,
                       hash_version=sketch.hash_version, backend="numpy")


def test_import_adapters_does_not_import_torch():
    code = ("import sys, adapters, adapters.dlpack; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_to_array_shares_memory_and_detaches():
    t = torch.randn(10, requires_grad=True)
    a = at.to_array(t)
    assert isinstance(a, np.ndarray)
    assert a.ctypes.data == t.data_ptr()
    with torch.no_grad():
        t[3] = 42.0
    assert a[3] == 42.0


def test_from_array_shares_memory():
    a = np.arange(6, dtype=np.float32)
    t = at.from_array(a)
    assert t.data_ptr() == a.ctypes.data
    t[0] = 7
    assert a[0] == 7


def test_from_array_refuses_read_only():
    a = np.zeros(3, np.float32)
    a.flags.writeable = False
    with pytest.raises(SketchError, match="read-only"):
        at.from_array(a)


@pytest.mark.parametrize("bad", [torch.ones(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.complex64)])
def test_to_array_refuses_unrepresentable_dtypes(bad):
    with pytest.raises(SketchError, match="dtype"):
        at.to_array(bad)


def test_to_array_refuses_other_types():
    with pytest.raises(SketchError, match="torch.Tensor"):
        at.to_array([1.0, 2.0])
    with pytest.raises(SketchError, match="dense"):
        at.to_array(torch.eye(3).to_sparse())


def test_insert_matches_numpy_path(host_backend):
    x = torch.randn(D, dtype=torch.float32)
    s = CountSketch(D, ROWS, COLS, seed=3, backend=host_backend)
    ref = _numpy_twin(s).insert(x.numpy().copy())
    at.insert(s, x)
    np.testing.assert_allclose(s.table, ref.table, rtol=1e-5, atol=1e-5)


def test_sketch_tensor_with_hash_version_2():
    x = torch.randn(D, dtype=torch.float32)
    s = at.sketch_tensor(x, ROWS, COLS, seed=3, hash_version=2)
    assert s.hash_version == 2
    ref = _numpy_twin(s).insert(x.numpy().copy())
    np.testing.assert_allclose(s.table, ref.table, rtol=1e-5, atol=1e-5)


def test_insert_accepts_any_shape_with_d_elements(host_backend):
    x = torch.randn(20, 25)
    a = CountSketch(D, ROWS, COLS, backend=host_backend)
    b = a.empty_like()
    at.insert(a, x)
    at.insert(b, x.reshape(-1))
    np.testing.assert_array_equal(a.table, b.table)
    # a non-contiguous view has a different flattening: it must still sketch its own C order
    c = a.empty_like()
    at.insert(c, x.t())
    d_ = a.empty_like().insert(np.ascontiguousarray(x.t().numpy()).reshape(-1))
    np.testing.assert_allclose(c.table, d_.table, rtol=1e-6, atol=1e-6)


def test_bad_inputs_leave_sketch_unchanged(host_backend):
    s = CountSketch(D, ROWS, COLS, backend=host_backend)
    at.insert(s, torch.randn(D))
    before = s.table.copy()
    with pytest.raises(SketchError):
        at.insert(s, torch.randn(D + 1))
    with pytest.raises(SketchError, match="NaN"):
        at.insert(s, torch.full((D,), float("nan")))
    with pytest.raises(SketchError, match="meta"):
        at.insert(s, torch.empty(D, device="meta"))
    with pytest.raises(SketchError, match="floating"):
        at.insert(s, torch.ones(D, dtype=torch.int32))
    with pytest.raises(SketchError, match="torch.Tensor"):
        at.insert(s, np.ones(D, np.float32))
    np.testing.assert_array_equal(s.table, before)


def test_queries_return_tensors_equal_to_numpy(host_backend):
    x = torch.randn(D, dtype=torch.float64)
    s = at.sketch_tensor(x, ROWS, COLS, seed=1)
    assert s.dtype == np.float64 and s.d == D
    ref = _numpy_twin(s).insert(x.numpy().copy())
    idx = torch.tensor([0, 7, 499, 7])
    q = at.query(s, idx)
    assert isinstance(q, torch.Tensor) and q.dtype == torch.float64 and q.device.type == "cpu"
    np.testing.assert_allclose(q.numpy(), ref.query(idx.numpy()), rtol=1e-10)
    ti, tv = at.topk(s, 10)
    assert ti.dtype == torch.int64 and tv.dtype == torch.float64
    np.testing.assert_allclose(np.sort(np.abs(tv.numpy())), np.sort(np.abs(ref.topk(10)[1])), rtol=1e-10)
    np.testing.assert_allclose(at.estimate_all(s).numpy(), ref.estimate_all(), rtol=1e-10)
    hi, hv = at.heavy_hitters(s, 1.0)
    ri, rv = ref.heavy_hitters(1.0)
    np.testing.assert_array_equal(hi.numpy(), ri)
    u = at.unsketch(s, 10)
    assert u.shape == (D,) and int((u != 0).sum()) <= 10
    np.testing.assert_allclose(u[ti].numpy(), tv.numpy())


def test_topk_recovers_planted_heavy_hitters(host_backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g) * 0.01
    planted = torch.tensor([5, 123, 2048, 3999])
    x[planted] = torch.tensor([10.0, -8.0, 6.0, -12.0])
    s = at.sketch_tensor(x, 5, 256)
    idx, vals = at.topk(s, 4)
    assert set(idx.tolist()) == set(planted.tolist())
    np.testing.assert_allclose(vals.numpy(), x[idx].numpy(), atol=0.5)


@given(a=st.floats(-4, 4), b=st.floats(-4, 4), seed=st.integers(0, 2**32))
def test_linearity_through_tensors(a, b, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(D, generator=g), torch.randn(D, generator=g)
    s = at.new_sketch_like_tensor(x, ROWS, COLS, seed=seed)
    combined = at.insert(s.empty_like(), a * x + b * y)
    sx, sy = at.insert(s.empty_like(), x), at.insert(s.empty_like(), y)
    sx.scale(a).add_scaled(sy, b)
    np.testing.assert_allclose(combined.table, sx.table, rtol=1e-4, atol=1e-4)


def test_table_as_tensor_shares_memory(host_backend):
    s = CountSketch(D, ROWS, COLS, backend=host_backend)
    t = at.table_as_tensor(s)
    assert t.data_ptr() == s.table.ctypes.data and t.shape == (ROWS, COLS)
    t += 1.0
    assert float(s.table.sum()) == ROWS * COLS


def test_sketch_from_tensor_table_writes_into_the_tensor(host_backend):
    table = torch.zeros(ROWS, COLS)
    s = at.sketch_from_tensor_table(table, D, seed=9)
    assert s.seed == 9 and s.table.ctypes.data == table.data_ptr()
    x = torch.randn(D)
    at.insert(s, x)
    ref = CountSketch(D, ROWS, COLS, seed=9, backend="numpy").insert(x.numpy())
    np.testing.assert_allclose(table.numpy(), ref.table, rtol=1e-5, atol=1e-5)


def test_new_sketch_like_tensor_picks_dtype_and_d():
    assert at.new_sketch_like_tensor(torch.ones(7, dtype=torch.float64), 1, 4).dtype == np.float64
    s = at.new_sketch_like_tensor(torch.ones(3, 3, dtype=torch.float16), 1, 4)
    assert s.dtype == np.float32 and s.d == 9 and s.device == "cpu"
    assert at.new_sketch_like_tensor(torch.ones(3), 1, 4, d=100, dtype=torch.float64).d == 100
    with pytest.raises(SketchError, match="meta"):
        at.new_sketch_like_tensor(torch.empty(3, device="meta"), 1, 4)


def test_sparse_and_batch_paths_agree_with_dense(host_backend):
    g = torch.Generator().manual_seed(1)
    stack = torch.randn(3, D, generator=g)
    s = CountSketch(D, ROWS, COLS, backend=host_backend)
    dense = at.insert(s.empty_like(), stack.sum(0))
    batch = at.insert_batch(s.empty_like(), stack)
    np.testing.assert_allclose(batch.table, dense.table, rtol=1e-4, atol=1e-4)
    each = at.sketch_each(s, stack)
    np.testing.assert_allclose(sum(e.table for e in each), dense.table, rtol=1e-4, atol=1e-4)
    idx = torch.tensor([3, 9, 9, 400])
    vals = torch.tensor([1.0, 2.0, -0.5, 4.0])
    sparse = at.insert_sparse(s.empty_like(), idx, vals)
    x = torch.zeros(D).index_add_(0, idx, vals)
    np.testing.assert_allclose(sparse.table, at.insert(s.empty_like(), x).table, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------- models
class _Mixed(torch.nn.Module):
    """Two float32 layers, a float64 layer, a frozen parameter and a buffer.

    parameters() order (own parameters first): frozen[0:5], a.weight[5:17], a.bias, b.weight, b.bias.
    """

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.frozen = torch.nn.Parameter(torch.randn(5), requires_grad=False)
        self.b = torch.nn.Linear(3, 2).double()
        self.register_buffer("running", torch.ones(2))

    def forward(self, x):
        return self.b(self.a(x).double()).sum() + 0.0 * self.running.sum()


def test_flatten_layout_dtypes_and_frozen_params():
    m = _Mixed()
    flat = at.flatten_params(m)
    assert flat.dtype == torch.float64 and flat.numel() == at.num_elements(m) == 4 * 3 + 3 + 5 + 3 * 2 + 2
    assert at.flatten_params(m, trainable_only=True).numel() == at.num_elements(m, trainable_only=True) == 23
    assert at.flatten_params(m, dtype=torch.float32).dtype == torch.float32
    np.testing.assert_allclose(flat[:5].numpy(), m.frozen.detach().numpy())


def test_flatten_grads_zeros_where_missing_and_error_option():
    m = _Mixed()
    m(torch.randn(2, 4)).backward()
    g = at.flatten_grads(m)
    assert g.numel() == at.num_elements(m)
    assert torch.all(g[:5] == 0)  # frozen: no grad -> zeros, layout kept
    np.testing.assert_allclose(g[5:17].numpy(), m.a.weight.grad.reshape(-1).numpy())
    with pytest.raises(SketchError, match="frozen"):
        at.flatten_grads(m, missing="error")
    gt = at.flatten_grads(m, trainable_only=True, missing="error")
    np.testing.assert_array_equal(g[5:].numpy(), gt.numpy())


def test_unflatten_round_trip_params_and_grads():
    m, other = _Mixed(), _Mixed()
    at.unflatten_into(other, at.flatten_params(m))
    for p, q in zip(m.parameters(), other.parameters(), strict=True):
        assert p.dtype == q.dtype
        torch.testing.assert_close(p, q)
    vec = torch.arange(at.num_elements(m, trainable_only=True), dtype=torch.float32)
    at.unflatten_into(m, vec, what="grads", trainable_only=True)
    assert m.frozen.grad is None
    torch.testing.assert_close(at.flatten_grads(m, trainable_only=True), vec.double())


def test_unflatten_bad_vector_leaves_model_unchanged():
    m = _Mixed()
    before = at.flatten_params(m)
    with pytest.raises(SketchError, match="elements"):
        at.unflatten_into(m, torch.zeros(before.numel() - 1))
    with pytest.raises(SketchError, match="floating"):
        at.unflatten_into(m, torch.zeros(before.numel(), dtype=torch.int64))
    with pytest.raises(SketchError, match="what"):
        at.unflatten_into(m, torch.zeros(before.numel()), what="buffers")
    torch.testing.assert_close(at.flatten_params(m), before)


def test_sketch_model_grad_equals_sketch_of_flat_grad(host_backend):
    m = _Mixed()
    m(torch.randn(8, 4)).backward()
    s = CountSketch(at.num_elements(m), 3, 16, backend=host_backend)
    at.sketch_model_grad(m, s)
    ref = _numpy_twin(s).insert(at.flatten_grads(m, dtype=torch.float32).numpy())
    np.testing.assert_allclose(s.table, ref.table, rtol=1e-5, atol=1e-6)
    with pytest.raises(SketchError, match="d="):
        at.sketch_model_grad(m, CountSketch(10, 1, 4, backend=host_backend))


def test_model_grad_sketches_add_up_over_batches(host_backend):
    # linearity at the model level: sketch(grad batch1) + sketch(grad batch2) = sketch(grad of summed loss)
    m = _Mixed()
    x1, x2 = torch.randn(4, 4), torch.randn(4, 4)
    s = CountSketch(at.num_elements(m), 3, 16, dtype="float64", backend=host_backend)
    parts = []
    for x in (x1, x2):
        m.zero_grad()
        m(x).backward()
        parts.append(at.sketch_model_grad(m, s.empty_like()))
    m.zero_grad()
    (m(x1) + m(x2)).backward()
    total = at.sketch_model_grad(m, s.empty_like())
    np.testing.assert_allclose(parts[0].table + parts[1].table, total.table, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_cuda_tensor_round_trip_matches_cpu():
    x = torch.randn(D, device="cuda")
    s = at.sketch_tensor(x, ROWS, COLS, seed=4)
    assert s.backend == "cupy" and s.device.startswith("cuda")
    ref = CountSketch(D, ROWS, COLS, seed=4, backend="numpy").insert(x.cpu().numpy())
    t = at.table_as_tensor(s)
    assert t.is_cuda and t.data_ptr() == s.table.data.ptr
    np.testing.assert_allclose(t.cpu().numpy(), ref.table, rtol=1e-4, atol=1e-4)
    idx, vals = at.topk(s, 5)
    assert idx.is_cuda and vals.is_cuda and idx.dtype == torch.int64
    ridx, rvals = ref.topk(5)
    np.testing.assert_allclose(np.sort(np.abs(vals.cpu().numpy())), np.sort(np.abs(rvals)), rtol=1e-4)
    arr = at.to_array(x)
    assert arr.data.ptr == x.data_ptr()


@pytest.mark.gpu
def test_cuda_work_runs_on_torch_current_stream():
    # the producer kernel and the sketch run on a side stream with no synchronisation between
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.randn(1 << 20, device="cuda") * 2.0
        s = at.sketch_tensor(x, 3, 1 << 12)
        est = at.estimate_all(s)
    side.synchronize()
    ref = at.sketch_tensor(x, 3, 1 << 12)
    # same kernels and input; float32 atomics may add in another order
    torch.testing.assert_close(est, at.estimate_all(ref), rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
def test_cuda_device_mismatch_is_refused():
    s = CountSketch(D, ROWS, COLS, backend="numpy")
    with pytest.raises(SketchError, match="cuda"):
        at.insert(s, torch.randn(D, device="cuda"))


def test_cuda_device_without_usable_cupy_says_what_is_missing():
    from sketchlib import BackendUnavailable, available_backends
    if "cupy" in available_backends():
        pytest.skip("CuPy can use a CUDA device here")
    with pytest.raises(BackendUnavailable, match="CuPy"):
        at.backend_for_device("cuda:0")
    assert at.backend_for_device("cpu") in ("numba", "numpy")

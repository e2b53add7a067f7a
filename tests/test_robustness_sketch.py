"""Robustness of one sketch (issue 10): threads, overflow, interrupts, copies, files, odd arrays.

Every test runs on every usable backend (the toy backend of
``tests/_toy_backend.py`` included) unless it is about host arrays or files.
Inputs are small integers where results are compared bit for bit: every float
sum is then exact, whatever the order of the additions.
"""
import copy
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _toy_backend  # noqa: F401  (registers "toy")
from sketchlib import CountSketch, SerializationError, SketchError, UnsupportedOperand
from sketchlib.backends import available_backends, get_backend, register_backend, unregister_backend

BACKENDS = available_backends()
HOST = [b for b in BACKENDS if get_backend(b).ARRAY_LIBRARY == "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=HOST)
def host(request):
    return request.param


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _on(backend, a):
    return get_backend(backend).from_numpy(np.ascontiguousarray(a))


def _snapshot(sk):
    return np.array(_host(sk.table), copy=True)


def _unchanged(sk, call, exc=SketchError, match=None):
    before = _snapshot(sk)
    with pytest.raises(exc, match=match):
        call()
    np.testing.assert_array_equal(_snapshot(sk), before)


def _ints(d, seed):
    return np.random.default_rng(seed).integers(-3, 4, d).astype(np.float32)


# ------------------------------------------------------------------ 1. threads
def test_concurrent_inserts_equal_serial_and_readers_see_whole_inserts(backend):
    d = 60_000 if backend == "toy" else 120_000
    x = _on(backend, _ints(d, 0))
    one = _snapshot(CountSketch(d, 5, 4096, backend=backend).insert(x)).astype(np.float64)
    ref = one.flat[np.argmax(np.abs(one))]
    sk = CountSketch(d, 5, 4096, backend=backend)
    threads, per, seen, bad = 4, 5, [], []
    done = threading.Event()

    def writer():
        for _ in range(per):
            sk.insert(x)

    def reader():
        while not done.is_set():
            table = _snapshot(sk.copy()).astype(np.float64)
            k = round(table.flat[np.argmax(np.abs(one))] / ref)
            seen.append(k)
            if not np.array_equal(table, k * one):
                bad.append(k)

    pool = [threading.Thread(target=writer) for _ in range(threads)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    done.set()
    watcher.join()
    serial = CountSketch(d, 5, 4096, backend=backend)
    for _ in range(threads * per):
        serial.insert(x)
    np.testing.assert_array_equal(_snapshot(sk), _snapshot(serial))
    assert bad == [], f"readers saw half-applied inserts (as multiples {bad[:5]})"
    assert seen and min(seen) >= 0 and max(seen) <= threads * per


def test_concurrent_merges_in_both_directions_do_not_deadlock(backend):
    a, b = (CountSketch(1000, 3, 64, backend=backend).insert(_on(backend, _ints(1000, s))) for s in (1, 2))
    results = []

    def work(p, q):
        for _ in range(50):
            p.merge(q).scale(0.5)
        results.append(True)

    pool = [threading.Thread(target=work, args=(a, b)), threading.Thread(target=work, args=(b, a))]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert results == [True, True]


# ----------------------------------------------------------------- 2. overflow
BIG = np.float32(3e38)


def _big_sketch(backend):
    sk = CountSketch(8, 3, 4, backend=backend)
    x = np.zeros(8, np.float32)
    x[2] = BIG
    return sk.insert(_on(backend, x)), x


def test_overflowing_inserts_are_refused_and_leave_the_table(backend):
    sk = CountSketch(8, 3, 4, backend=backend)
    huge = np.zeros(8)
    huge[1] = 1e300                               # finite float64, inf in float32
    _unchanged(sk, lambda: sk.insert(_on(backend, huge)), match="overflow")
    sk, x = _big_sketch(backend)
    _unchanged(sk, lambda: sk.insert(_on(backend, x)), match="overflow")
    _unchanged(sk, lambda: sk.insert_batch(_on(backend, np.stack([x, x]))), match="overflow")
    idx = _on(backend, np.array([2, 2], dtype=np.int64))
    _unchanged(sk, lambda: sk.insert_sparse(idx, _on(backend, np.array([BIG, BIG]))), match="overflow")
    with pytest.raises(SketchError, match="overflow"):
        sk.sketch_each(_on(backend, np.stack([huge, huge])))
    # Near the limit but finite: accepted (the exact check runs on a copy first).
    sk.insert(_on(backend, -x))
    assert np.all(_snapshot(sk) == 0)
    sk.insert(_on(backend, x))
    assert np.isfinite(_snapshot(sk)).all()


def test_overflowing_arithmetic_is_refused_and_leaves_the_table(backend):
    sk, x = _big_sketch(backend)
    other = sk.copy()
    _unchanged(sk, lambda: sk.scale(1e300), match="overflow")
    _unchanged(sk, lambda: sk.scale(10.0), match="overflow")
    _unchanged(sk, lambda: sk.add_scaled(other, 1e300), match="overflow")
    _unchanged(sk, lambda: sk.add_scaled(other, 2.0), match="overflow")
    _unchanged(sk, lambda: sk.merge(other), match="overflow")
    _unchanged(sk, lambda: sk.merge(sk), match="overflow")
    _unchanged(sk, lambda: sk.__iadd__(other), match="overflow")
    _unchanged(sk, lambda: sk.__imul__(4.0), match="overflow")
    _unchanged(sk, lambda: sk + other, match="overflow")
    _unchanged(sk, lambda: sk - (-1.0 * other), match="overflow")
    _unchanged(sk, lambda: sk * 1e30, match="overflow")
    small = CountSketch(8, 3, 4, backend=backend).insert(_on(backend, np.ones(8, np.float32)))
    _unchanged(small, lambda: small.scale(1e300), match="overflow")   # 1e300 is inf in float32
    assert np.isfinite(_snapshot(sk - other)).all()
    # check_finite=False keeps skipping every check (documented: it poisons).
    sk.insert(_on(backend, x), check_finite=False)
    assert not np.isfinite(_snapshot(sk)).all()


# ----------------------------------------------------------- 3. masked arrays
def test_masked_arrays_are_refused(host):
    sk = CountSketch(6, 3, 8, backend=host).insert(np.arange(6, dtype=np.float32))
    masked = np.ma.array([1, np.nan, 2, 3, 4, 5], mask=[0, 1, 0, 0, 0, 0], dtype=np.float32)
    _unchanged(sk, lambda: sk.insert(masked), match="masked")
    _unchanged(sk, lambda: sk.insert_batch(masked.reshape(1, 6)), match="masked")
    _unchanged(sk, lambda: sk.insert_sparse(np.arange(6), masked), match="masked")
    with pytest.raises(SketchError, match="masked"):
        CountSketch.from_table(np.ma.zeros((3, 8), dtype=np.float32), 6, backend=host)


# -------------------------------------------------------- 4. interrupted inserts
def test_interrupted_inserts_leave_the_table_before_or_after(backend, monkeypatch):
    module = get_backend(backend)
    for name in ("CHUNK", "SUM_CHUNK"):          # many small steps: many places to interrupt
        if hasattr(module, name):
            monkeypatch.setattr(module, name, 2048)
    d = 40_000 if backend == "toy" else 120_000
    stack = _on(backend, np.stack([_ints(d, 3), _ints(d, 4)]))
    base = CountSketch(d, 5, 1024, backend=backend).insert(_on(backend, _ints(d, 5)))
    before = _snapshot(base)
    after = _snapshot(base.copy().insert_batch(stack))
    start = time.perf_counter()
    base.copy().insert_batch(stack)
    took = time.perf_counter() - start
    rng = np.random.default_rng(0)
    outcomes = {"before": 0, "after": 0}
    main = threading.get_ident()
    for _ in range(15):
        sk = base.copy()
        timer = threading.Timer(rng.uniform(0, took), signal.pthread_kill, (main, signal.SIGINT))
        try:
            timer.start()
            sk.insert_batch(stack)
            timer.join()
        except KeyboardInterrupt:
            timer.join()
        table = _snapshot(sk)
        if np.array_equal(table, before):
            outcomes["before"] += 1
        else:
            np.testing.assert_array_equal(table, after, err_msg="an interrupted insert left a partial table")
            outcomes["after"] += 1
    assert sum(outcomes.values()) == 15


# ------------------------------------------------------------------- 7. copies
def test_pickle_deepcopy_and_copy_never_share_the_table(backend):
    sk = CountSketch(300, 3, 32, seed=5, backend=backend).insert(_on(backend, _ints(300, 6)))
    for clone in (pickle.loads(pickle.dumps(sk)), copy.deepcopy(sk), copy.copy(sk)):
        assert clone.signature() == sk.signature() and clone.backend == sk.backend
        np.testing.assert_array_equal(_snapshot(clone), _snapshot(sk))
        if backend in ("numpy", "numba"):
            assert clone.table.ctypes.data % 64 == 0          # host tables stay 64-byte aligned
        clone.scale(2.0)
        assert not np.array_equal(_snapshot(clone), _snapshot(sk))
    # The clone has its own lock and works on its own.
    clone = pickle.loads(pickle.dumps(sk))
    clone.insert(_on(backend, _ints(300, 7)))
    np.testing.assert_array_equal(_snapshot(clone), _snapshot(sk.copy().insert(_on(backend, _ints(300, 7)))))


def test_unpickling_where_the_backend_is_missing_says_what_to_do():
    sk = CountSketch(50, 2, 8, backend="toy").insert(np.ones(50, np.float32))
    data = pickle.dumps(sk)
    unregister_backend("toy")
    try:
        with pytest.raises(SketchError, match=r"to\('numpy'\)"):
            pickle.loads(data)
    finally:
        register_backend("toy", _toy_backend, array_library="numpy", priority=-10, replace=True)
    np.testing.assert_array_equal(pickle.loads(data).table, sk.table)


# ------------------------------------------------------------- 8. temp files
_KILLED_SAVE = """
import os, signal, sys
import numpy as np
from sketchlib import CountSketch
sk = CountSketch(1000, 3, 64, backend="numpy").insert(np.ones(1000, np.float32))
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)   # die after writing, before the rename
sk.save(sys.argv[1])
"""


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    target = tmp_path / "s.sketch"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(target)], env=env)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-s.sketch.") and str(proc.pid) in left[0]
    live = tmp_path / f".tmp-s.sketch.{os.getppid()}.abc.sketch"   # a live writer's: must stay
    live.write_bytes(b"x")
    sk = CountSketch(10, 2, 4, backend="numpy").insert(np.ones(10, np.float32))
    sk.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "s.sketch"])
    np.testing.assert_array_equal(CountSketch.load(target, backend="numpy").table, sk.table)


def test_save_onto_a_symlink_writes_through(tmp_path):
    real = tmp_path / "real.sketch"
    link = tmp_path / "link.sketch"
    CountSketch(10, 2, 4, backend="numpy").save(real)
    link.symlink_to(real)
    sk = CountSketch(10, 2, 4, backend="numpy").insert(np.ones(10, np.float32))
    sk.save(link)
    assert link.is_symlink()
    np.testing.assert_array_equal(CountSketch.load(real, backend="numpy").table, sk.table)


# --------------------------------------------------------------- 9-12. edges
def test_zero_dimensional_stacks_are_refused(backend):
    sk = CountSketch(10, 2, 4, backend=backend)
    scalar = _on(backend, np.array(1.0, dtype=np.float32))
    _unchanged(sk, lambda: sk.insert_batch(scalar), match="2-D")
    with pytest.raises(SketchError, match="2-D"):
        sk.sketch_each(scalar)


class _MyArray(np.ndarray):
    """A user subclass (its module is this test file, not numpy)."""


class _MyMemmap(np.memmap):
    """A memmap subclass."""


def test_ndarray_subclasses_are_taken_as_ndarray(host, tmp_path):
    d = 40
    x = _ints(d, 8)
    ref = CountSketch(d, 3, 16, backend=host).insert(x)
    mm = _MyMemmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=(d,))
    mm[:] = x
    for arr in (x.view(_MyArray), mm):
        np.testing.assert_array_equal(CountSketch(d, 3, 16, backend=host).insert(arr).table, ref.table)
    stacked = CountSketch(d, 3, 16, backend=host).insert_batch(np.matrix(x.reshape(1, d)))
    np.testing.assert_array_equal(stacked.table, ref.table)
    idx = CountSketch(d, 3, 16, backend=host).insert_sparse(np.arange(d).view(_MyArray), x.view(_MyArray))
    np.testing.assert_allclose(idx.table, ref.table, rtol=0, atol=0)


def test_big_endian_dtypes_are_made_native(host):
    d = 50
    x = _ints(d, 9)
    sk = CountSketch(d, 3, 16, dtype=">f4", backend=host)
    assert sk.dtype == np.dtype("float32") and sk.table.dtype.isnative
    sk.insert(x.astype(">f4")).insert_sparse(np.arange(3).astype(">i8"), x[:3].astype(">f8"))
    ref = CountSketch(d, 3, 16, backend=host).insert(x).insert_sparse(np.arange(3), x[:3])
    np.testing.assert_array_equal(sk.table, ref.table)
    assert sk.query(np.arange(4).astype(">i4")).dtype.isnative
    with pytest.raises(SketchError, match="byte order"):
        CountSketch.from_table(np.zeros((3, 16), dtype=">f4"), d, backend=host)


def test_read_only_tables_are_refused_at_construction(host):
    table = np.zeros((3, 16), dtype=np.float32)
    table.flags.writeable = False
    with pytest.raises(SketchError, match="read-only"):
        CountSketch.from_table(table, 10, backend=host)


# ---------------------------------------------------------- 13. NaN ordering
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 3, 4])
def test_topk_and_heavy_hitters_agree_on_tables_with_nan_and_inf(backend, dtype, rows):
    d, cols = 300, 64
    rng = np.random.default_rng(rows)
    table = rng.standard_normal((rows, cols)).astype(dtype)
    for value, share in ((np.nan, 0.1), (np.inf, 0.05), (-np.inf, 0.05)):
        table[rng.random(table.shape) < share] = value
    ref = CountSketch.from_table(table.copy(), d, backend="numpy")
    sk = CountSketch.from_table(_on(backend, table), d, backend=backend)
    with np.errstate(invalid="ignore"):
        est = ref.estimate_all()
        np.testing.assert_array_equal(_host(sk.estimate_all()), est)       # NaN wherever a row is NaN
        for k in (1, 5, 30, d):
            i_ref, v_ref = ref.topk(k)
            i, v = sk.topk(k)
            np.testing.assert_array_equal(_host(i), i_ref)
            np.testing.assert_array_equal(_host(v), v_ref)
        n_nan = int(np.isnan(est).sum())
        assert 0 < n_nan < d and np.isnan(ref.topk(n_nan)[1]).all()       # NaN ranks above +inf
        assert not np.isnan(ref.topk(n_nan + 1)[1][-1])
        for thr in (0.0, 1.0, 1e30):
            i_ref, v_ref = ref.heavy_hitters(thr)
            i, v = sk.heavy_hitters(thr)
            np.testing.assert_array_equal(_host(i), i_ref)
            np.testing.assert_array_equal(_host(v), v_ref)
            assert set(np.flatnonzero(np.isnan(est))) <= set(i_ref.tolist())   # NaN is heavy


# ------------------------------------------------------------ 14. operators
def test_operators_say_what_a_sketch_combines_with(backend):
    sk = CountSketch(10, 2, 4, backend=backend).insert(_on(backend, np.ones(10, np.float32)))
    for call in (lambda: sk + 1, lambda: 1 + sk, lambda: sk - 1.0, lambda: 2 - sk, lambda: sk * sk,
                 lambda: sk * "a", lambda: np.ones(3) + sk):
        _unchanged(sk, call, UnsupportedOperand, "same signature")
    for op in ("__iadd__", "__isub__", "__imul__"):
        _unchanged(sk, lambda: getattr(sk, op)(np.ones(2)), TypeError, "multiplies only by a real scalar")


# -------------------------------------------------- 17. serialized NaN/inf
def test_a_serialized_table_with_nan_is_refused_unless_allowed(tmp_path, host):
    sk = CountSketch(10, 2, 4, backend=host)
    sk.insert(np.full(10, np.nan, np.float32), check_finite=False)
    data = sk.to_bytes()
    with pytest.raises(SerializationError, match="NaN or infinity"):
        CountSketch.from_bytes(data, backend=host)
    back = CountSketch.from_bytes(data, backend=host, allow_nonfinite=True)
    np.testing.assert_array_equal(back.table, sk.table)
    sk.save(tmp_path / "p.sketch")
    with pytest.raises(SerializationError, match="allow_nonfinite"):
        CountSketch.load(tmp_path / "p.sketch", backend=host)
    assert np.isnan(CountSketch.load(tmp_path / "p.sketch", backend=host, allow_nonfinite=True).table).all()


# ------------------------------------------- 2. overflow, as a property
_MAGNITUDES = st.sampled_from([0.0, 1.0, 1e18, 1e30, 1e36, 1e38, 3e38, 1e300])


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["insert", "sparse", "batch", "scale", "add", "sub", "self"]),
                              _MAGNITUDES, st.sampled_from([-1.0, 1.0]), st.integers(0, 7)), min_size=1, max_size=8))
def test_every_operation_refuses_or_stays_finite(ops):
    """Any sequence of finite operations: each either refuses (table unchanged) or leaves a finite table."""
    sk = CountSketch(8, 3, 4, backend="numpy")
    other = CountSketch(8, 3, 4, backend="numpy").insert(np.full(8, 1e38, np.float32))
    for op, mag, sign, i in ops:
        x = np.zeros(8)
        x[i] = sign * mag
        call = {"insert": lambda: sk.insert(x),
                "sparse": lambda: sk.insert_sparse(np.array([i, i]), np.array([x[i], x[i]])),
                "batch": lambda: sk.insert_batch(np.stack([x, x])),
                "scale": lambda: sk.scale(sign * max(mag, 1.0) ** 0.5),
                "add": lambda: sk.add_scaled(other, sign * mag ** 0.25),
                "sub": lambda: sk.__isub__(other),
                "self": lambda: sk.merge(sk)}[op]
        before = _snapshot(sk)
        try:
            call()
        except SketchError as exc:
            assert "overflow" in str(exc)
            np.testing.assert_array_equal(_snapshot(sk), before)
        assert np.isfinite(_snapshot(sk)).all(), (op, mag)

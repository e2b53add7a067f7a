"""adapters.distributed: real 2-process all-reduce over gloo on loopback, bounded in time."""
import datetime
import multiprocessing
import socket
import traceback

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from adapters import distributed as ad  # noqa: E402
from sketchlib import CountSketch, IncompatibleSketches, SketchError  # noqa: E402

D, ROWS, COLS = 2000, 3, 128
JOIN_TIMEOUT_S = 90


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vector(rank):
    return np.random.default_rng(rank).standard_normal(D).astype(np.float32)


def _raises(fn, exc_type):
    """Name of what ``fn`` raised: the expected type's name plus its message, or 'no error'."""
    try:
        fn()
    except exc_type as exc:
        return f"{exc_type.__name__}: {exc}"
    return "no error"


def _scenarios(rank, world, backend):
    """Everything a rank checks; returns a dict of observations for the parent to assert on."""
    out = {}
    new = lambda **kw: CountSketch(D, ROWS, COLS, backend=backend, **kw)  # noqa: E731
    to_dev = (lambda a: a) if backend != "cupy" else (lambda a: __import__("cupy").asarray(a))

    s = new(seed=5).insert(to_dev(_vector(rank)))
    table, ptr = s.table, ad._at.table_as_tensor(s).data_ptr()
    ad.allreduce_sketch_(s)
    expected = CountSketch(D, ROWS, COLS, seed=5, backend="numpy").insert(
        sum(_vector(r) for r in range(world)))
    out["sum_err"] = float(np.abs(_host(s.table) - expected.table).max())
    out["in_place"] = s.table is table and ad._at.table_as_tensor(s).data_ptr() == ptr
    out["topk_sum"] = np.sort(_host(s.topk(10)[0])).tolist()

    m = new(seed=5).insert(to_dev(_vector(rank)))
    ad.allreduce_sketch_(m, op="mean")
    out["mean_err"] = float(np.abs(_host(m.table) - expected.table / world).max())

    # A rank with another seed: every rank raises, nobody sums.
    bad = new(seed=5 if rank == 0 else 6).insert(to_dev(_vector(rank)))
    before = _host(bad.table).copy()
    out["seed_mismatch"] = _raises(lambda: ad.allreduce_sketch_(bad), IncompatibleSketches)
    out["unchanged_after_mismatch"] = bool(np.array_equal(_host(bad.table), before))

    wide = CountSketch(D, ROWS, COLS + rank, backend=backend)
    out["cols_mismatch"] = _raises(lambda: ad.allreduce_sketch_(wide), IncompatibleSketches)

    many = [new() for _ in range(1 + rank)]
    out["count_mismatch"] = _raises(lambda: ad.allreduce_sketches_(many), IncompatibleSketches)

    ro = CountSketch.from_table(np.zeros((ROWS, COLS), np.float32), D, backend="numpy")
    ro.table.flags.writeable = False
    out["read_only"] = _raises(lambda: ad.allreduce_sketch_(ro), SketchError)

    # The group is still healthy after the refusals: a batch of two sketches sums correctly.
    a, b = new(seed=1), new(seed=2)
    a.insert(to_dev(_vector(rank)))
    b.insert(to_dev(2 * _vector(rank)))
    ad.allreduce_sketches_([a, b])
    total = sum(_vector(r) for r in range(world))
    ea = CountSketch(D, ROWS, COLS, seed=1, backend="numpy").insert(total)
    eb = CountSketch(D, ROWS, COLS, seed=2, backend="numpy").insert(2 * total)
    out["batch_err"] = max(float(np.abs(_host(a.table) - ea.table).max()),
                           float(np.abs(_host(b.table) - eb.table).max()))
    return out


def _host(array):
    return array.get() if hasattr(array, "get") else np.asarray(array)


def _worker(rank, world, port, pg_backend, sketch_backend, queue):
    try:
        dist.init_process_group(pg_backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=30))
        try:
            queue.put((rank, _scenarios(rank, world, sketch_backend)))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - report every failure to the parent
        queue.put((rank, {"error": traceback.format_exc()}))


def _run(world, pg_backend, sketch_backend):
    """Spawn ``world`` ranks on loopback, collect their observations, never hang."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, pg_backend, sketch_backend, queue),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(world):
            rank, obs = queue.get(timeout=JOIN_TIMEOUT_S)
            results[rank] = obs
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    for rank, obs in results.items():
        assert "error" not in obs, f"rank {rank} failed:\n{obs['error']}"
    return results


@pytest.fixture(scope="module")
def gloo_results():
    return _run(2, "gloo", "numpy")


def test_allreduce_is_the_sketch_of_the_sum(gloo_results):
    for obs in gloo_results.values():
        assert obs["sum_err"] < 1e-4
        assert obs["in_place"]
        assert obs["mean_err"] < 1e-4
        assert obs["batch_err"] < 1e-4
    assert gloo_results[0]["topk_sum"] == gloo_results[1]["topk_sum"]


def test_seed_mismatch_raises_on_every_rank_and_sums_nothing(gloo_results):
    for obs in gloo_results.values():
        msg = obs["seed_mismatch"]
        assert msg.startswith("IncompatibleSketches"), msg
        assert "seed:" in msg and "5 (rank" in msg and "6 (rank" in msg
        assert obs["unchanged_after_mismatch"]


def test_other_mismatches_raise_on_every_rank(gloo_results):
    for obs in gloo_results.values():
        assert "cols" in obs["cols_mismatch"] and obs["cols_mismatch"].startswith("IncompatibleSketches")
        assert obs["count_mismatch"].startswith("IncompatibleSketches")
        assert obs["read_only"].startswith("SketchError") and "read-only" in obs["read_only"]


def test_refuses_without_process_group():
    assert not dist.is_initialized()
    with pytest.raises(SketchError, match="init_process_group"):
        ad.allreduce_sketch_(CountSketch(D, ROWS, COLS, backend="numpy"))


def test_signature_tensor_round_trips_large_seeds():
    s = CountSketch(D, ROWS, COLS, seed=2**64 - 3, dtype="float64", backend="numpy")
    desc = ad._describe(ad.signature_tensor(s).numpy())
    assert tuple(desc.values()) == s.signature()


@pytest.mark.gpu
def test_nccl_allreduce_of_cuda_sketch_single_rank():
    # One GPU here: NCCL with one rank still exercises the CUDA tensor path and the check.
    results = _run(1, "nccl", "cupy")
    obs = results[0]
    assert obs["sum_err"] < 1e-4 and obs["in_place"]

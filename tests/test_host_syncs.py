"""Host synchronisations of a FetchSGD step, counted on the CPU, and the trusted sketch path.

On a GPU every device-to-host read waits for the queued work.  The backends
record theirs (``sketchlib.backends.count_host_transfers``), fedsim its own
(``fedsim.host.count_host_reads``); these tests pin both per FetchSGD step:
no backend read, and two fedsim reads (the gradient's finiteness agreed over
ranks before any server state changes; the round's row: divergence flag, train
loss, changed count, download counts).
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim import Simulation, parse_config, rule_params
from fedsim.host import count_host_reads, read_host
from fedsim.rules import make_rule
from sketchlib import CountSketch, SketchError
from sketchlib.backends import available_backends, count_host_transfers

HOST_BACKENDS = [b for b in ("numpy", "numba") if b in available_backends()]


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_unchecked_indices_give_the_checked_result_without_a_read(backend, data):
    d = data.draw(st.integers(1, 300))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    base = CountSketch(d, 3, 64, seed=7, backend=backend).insert(rng.standard_normal(d).astype(np.float32))
    idx = rng.integers(0, d, size=data.draw(st.integers(1, 40))).astype(np.int64)
    vals = rng.standard_normal(idx.shape[0]).astype(np.float32)
    for op in (lambda s, **kw: s.query(idx, **kw),
               lambda s, **kw: s.zero_coordinates(idx, **kw).table,
               lambda s, **kw: s.insert_sparse(idx, vals, check_finite=False, **kw).table):
        with count_host_transfers() as checked:
            want = op(base.copy())
        with count_host_transfers() as trusted:
            got = op(base.copy(), check_bounds=False)
        np.testing.assert_array_equal(got, want)
        assert (checked.count, trusted.count) == (1, 0)   # the range check is the one read


def test_bounds_are_still_checked_by_default():
    s = CountSketch(50, 3, 64, backend="numpy")
    before = s.table.copy()
    for call in (lambda: s.query(np.array([50])), lambda: s.zero_coordinates(np.array([-1])),
                 lambda: s.insert_sparse(np.array([0, 50]), np.ones(2, np.float32))):
        with pytest.raises(SketchError, match=r"\[0, 50\)"):
            call()
    np.testing.assert_array_equal(s.table, before)


def test_read_host_reads_once_and_keeps_values():
    a, b, c = torch.tensor([1.5, -2.0]), torch.tensor(True), torch.arange(3, dtype=torch.int64) * 2**40
    with count_host_reads() as reads:
        got = read_host(a, b, c)
    assert got == [[1.5, -2.0], [1.0], [0.0, 2.0**40, 2.0**41]]
    assert (reads.count, reads.nbytes) == (1, 6 * 8)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("kw", [{"zeroing": "buckets"}, {"zeroing": "subtract"},
                                {"zeroing": "subtract", "lr_placement": "after", "second_round": 2}])
def test_fetchsgd_server_step_reads_back_only_the_overflow_guard(backend, kw):
    """The server step reads nothing back for its own sake; the one read left is the sketch's overflow guard
    (issue 10): after ``zeroing = "subtract"`` inserts the unsketched values unchecked, the error sketch's
    bound on ``max |T|`` is unknown, and the next round's ``add_scaled`` reads the exact max once."""
    d = 5000
    rule = make_rule(rule_params("fetchsgd", k=40, rows=5, cols=400, sketch_backend=backend, **kw), d)
    g = torch.randn(d, generator=torch.Generator().manual_seed(1))
    exact = (lambda cand: g[cand].clone()) if kw.get("second_round") else None
    guard = 0 if kw["zeroing"] == "buckets" else 1
    for step in range(3):
        s = rule.new_sketch().insert(g.numpy())
        with count_host_transfers() as transfers, count_host_reads() as reads:
            update = rule.step_from_sketch(s, 0.1, exact_values=exact)
        assert (transfers.count, reads.count) == (guard if step else 0, 0)
        assert 0 < int(torch.count_nonzero(update)) <= 40


def _tiny_run(rule, rounds=3, **rule_kw):
    raw = {"data": {"dataset": "digits", "num_clients": 20}, "model": {"name": "mlp"},
           "train": {"rounds": rounds, "clients_per_round": 4, "eval_every": 1000, "threads": 1},
           "rule": dict(rule_kw, name=rule), "output": {"progress": False, "checkpoint_every": 0}}
    (spec,) = parse_config(raw).runs()
    return Simulation(spec)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_simulated_fetchsgd_step_costs_two_host_reads(backend):
    """Two fedsim reads (gradient finiteness before any server state changes; the metrics row) and one
    sketch read: the overflow guard's ``max |T|`` of the round's sketch, inserted unchecked (the round
    already checked the gradient), before it is merged into the momentum."""
    sim = _tiny_run("fetchsgd", rounds=4, k=50, rows=5, cols=400, sketch_backend=backend)
    for t in range(3):   # the last round evaluates (more reads); not pinned here
        with count_host_transfers() as transfers, count_host_reads() as reads:
            row = sim.step()
        assert transfers.count == 1
        assert reads.count == 2   # gradient finiteness (before the server state), then the row
        assert 0 < row["changed"] <= 50 and row["train_loss"] > 0
        if t:
            # every client downloads the weights changed since its last round: at least one round's
            assert row["down_bytes"] >= min(4 * sim.d, 8 * sim.history[t - 1]["changed"])


def test_batched_bookkeeping_equals_the_accountants_own_reads():
    """Counts passed in from the simulator's one read equal what the accountant reads itself."""
    sims = [_tiny_run("fetchsgd", rounds=4, k=30, rows=3, cols=400, sketch_backend="numpy") for _ in range(2)]
    for _ in range(3):
        assert sims[0].step() == sims[1].step()
    own, given_ = sims[0].accountant, sims[1].accountant
    ids = np.arange(sims[0].num_clients)
    with count_host_reads() as reads:
        since = read_host(given_.changed_since())[0]
        assert own.download(3, ids) == given_.download(3, ids, changed_since=since)
    assert reads.count == 2
    update = torch.zeros(sims[0].d)
    update[[0, 5, sims[0].d - 1]] = torch.tensor([1.0, -2.0, 3.0])
    assert own.record_update(3, update) == given_.record_update(3, update, changed=3) == 3
    assert torch.equal(own.state.hist, given_.state.hist)
    assert torch.equal(own.state.last_changed, given_.state.last_changed)
    assert int(own.state.hist.sum()) == sims[0].d

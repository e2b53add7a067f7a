"""Each server rule against an independent oracle, and sketch linearity on real gradients."""
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

from fedsim import Simulation, parse_config
from fedsim.compressors import IdentitySketch
from sketchlib import CountSketch, SketchError

BASE = {
    "data": {"dataset": "digits", "num_clients": 40, "partition": "pathological", "classes_per_client": 1},
    "model": {"name": "mlp"},
    "train": {"rounds": 6, "clients_per_round": 5, "lr": 0.2, "schedule": "constant", "weight_decay": 5e-4,
              "eval_every": 3, "threads": 1},
    "rule": {"momentum": 0.9, "k": 300, "rows": 5, "cols": 2000, "sketch_backend": "numpy"},
    "output": {"progress": False, "checkpoint_every": 0},
}


def make_sim(rule, train=None, **rule_kw):
    """A Simulation of the tiny base config with the given rule settings."""
    raw = {k: dict(v) for k, v in BASE.items()}
    raw["rule"].update(rule_kw, name=rule)
    raw["train"].update(train or {})
    (spec,) = parse_config(raw).runs()
    return Simulation(spec)


def run_in_lockstep(a, b, rounds, atol=1e-6):
    """Step two simulations together; assert equal weights after every round."""
    for _ in range(rounds):
        a.step()
        b.step()
        torch.testing.assert_close(a.params, b.params, rtol=1e-5, atol=atol)


def test_uncompressed_equals_momentum_sgd_on_union_batch():
    sim = make_sim("uncompressed")
    torch.manual_seed(0)
    oracle = sim.model  # same architecture; its own parameters are the oracle's weights
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(sim.params.clone(), oracle.parameters())
    opt = torch.optim.SGD(oracle.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    for t in range(6):
        ids = sim.sample_clients(t)
        xs, ys = zip(*(sim.client_batch(t, c) for c in ids))
        opt.zero_grad()
        F.cross_entropy(oracle(torch.cat(xs)), torch.cat(ys)).backward()
        opt.step()
        sim.step()
        want = torch.nn.utils.parameters_to_vector(oracle.parameters()).detach()
        torch.testing.assert_close(sim.params, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(sim.params, torch.zeros_like(sim.params))


@pytest.mark.parametrize("placement", ["inside", "after"])
def test_fetchsgd_with_identity_sketch_equals_true_topk(placement):
    fetch = make_sim("fetchsgd", sketch="identity", zeroing="buckets", lr_placement=placement)
    exact = make_sim("true_topk", lr_placement=placement, momentum_stopping=True)
    run_in_lockstep(fetch, exact, 6)
    np.testing.assert_allclose(fetch.rule.state.error.table[0], exact.rule.state.error.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fetch.rule.state.momentum.table[0], exact.rule.state.momentum.numpy(),
                               rtol=1e-5, atol=1e-7)


def test_fetchsgd_identity_subtract_equals_true_topk_without_momentum_stopping():
    fetch = make_sim("fetchsgd", sketch="identity", zeroing="subtract")
    exact = make_sim("true_topk", momentum_stopping=False)
    run_in_lockstep(fetch, exact, 6)


def test_fetchsgd_second_round_with_identity_equals_true_topk():
    fetch = make_sim("fetchsgd", sketch="identity", second_round=3)
    exact = make_sim("true_topk")
    run_in_lockstep(fetch, exact, 4)


def _round_gradient(sim, t=0):
    """The round's weighted gradient sum with weight decay, computed directly."""
    ids = sim.sample_clients(t)
    batches = [sim.client_batch(t, c) for c in ids]
    n = torch.tensor([float(x.shape[0]) for x, _ in batches])
    g = sim.engine.gradient_sum(sim.model, sim.params, batches, n / n.sum())
    return g + 5e-4 * sim.params


def test_fetchsgd_second_round_uses_exact_values_of_the_round():
    # In round 1 error and momentum are zero, so the second round's values are the
    # exact lr * g at the chosen coordinates; one round alone carries sketch error.
    errors = {}
    for p in (0, 4):
        sim = make_sim("fetchsgd", k=50, cols=300, second_round=p)
        start = sim.params.clone()
        want = 0.2 * _round_gradient(sim)
        sim.step()
        delta = start - sim.params
        idx = torch.nonzero(delta).flatten()
        assert idx.numel() == 50
        errors[p] = float((delta[idx] - want[idx]).abs().max())
        if p:
            torch.testing.assert_close(delta[idx], want[idx], rtol=1e-4, atol=1e-8)
            assert sim.rule.upload_bytes() == 5 * 300 * 4 + 4 * 50 * 4
            assert sim.rule.extra_download_bytes() == 4 * 50 * 4
    assert errors[0] > 10 * errors[4]


def test_local_topk_with_k_equal_d_equals_uncompressed():
    probe = make_sim("uncompressed")
    d = probe.d
    local = make_sim("local_topk", k=d, global_momentum=True)
    run_in_lockstep(local, probe, 6)


def test_local_topk_error_feedback_keeps_what_was_not_sent():
    sim = make_sim("local_topk", k=20, local_error_feedback=True, global_momentum=False)
    start = sim.params.clone()
    ids = sim.sample_clients(0)
    grads = sim.engine.gradients(sim.model, start, [sim.client_batch(0, c) for c in ids])
    grads = grads + 5e-4 * start
    sim.step()
    for c, g in zip(ids, grads):
        e = sim.rule.state.errors[int(c)]
        sent = g - e
        assert int((sent != 0).sum()) == 20  # exactly k coordinates left the client
        kept = torch.topk(g.abs(), 20).indices
        torch.testing.assert_close(sent[kept], g[kept])


def test_fedavg_with_one_local_step_equals_fedsgd():
    fedavg = make_sim("fedavg", local_epochs=1, server_momentum=False, server_lr=1.0)
    fedsgd = make_sim("uncompressed", momentum=0.0)
    run_in_lockstep(fedavg, fedsgd, 6)


def test_fedavg_local_epochs_move_further_than_one_step():
    one = make_sim("fedavg", local_epochs=1)
    five = make_sim("fedavg", local_epochs=5)
    start = one.params.clone()
    one.step()
    five.step()
    assert float((five.params - start).norm()) > 2 * float((one.params - start).norm())


def _client_gradients(n=6):
    sim = make_sim("fetchsgd")
    ids = sim.sample_clients(0)[:n]
    batches = [sim.client_batch(0, c) for c in ids]
    return sim, sim.engine.gradients(sim.model, sim.params, batches), batches


def test_sketch_each_then_sum_equals_sum_then_sketch_on_real_gradients():
    sim, grads, batches = _client_gradients()
    w = torch.full((grads.shape[0],), 1.0 / grads.shape[0])
    summed = sim.engine.gradient_sum(sim.model, sim.params, batches, w)
    torch.testing.assert_close(summed, (w[:, None] * grads).sum(0), rtol=1e-4, atol=1e-7)
    each = CountSketch(sim.d, 5, 2000, seed=3, backend="numpy")
    for g, wi in zip(grads.numpy(), w.numpy()):
        each.add_scaled(CountSketch(sim.d, 5, 2000, seed=3, backend="numpy").insert(g), float(wi))
    once = CountSketch(sim.d, 5, 2000, seed=3, backend="numpy").insert(summed.numpy())
    scale = float(np.abs(once.table).max())
    np.testing.assert_allclose(each.table, once.table, rtol=0, atol=1e-5 * scale)


def test_identity_sketch_is_exact_and_linear():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    s = IdentitySketch(50).insert(a).add_scaled(IdentitySketch(50).insert(b), 2.0)
    np.testing.assert_allclose(s.estimate_all(), a + 2 * b, rtol=1e-6)
    idx, vals = s.topk(5)
    want = np.argsort(-np.abs(a + 2 * b))[:5]
    assert list(idx) == list(want)
    s.zero_coordinates(idx)
    assert np.all(s.query(idx) == 0)


@pytest.mark.parametrize("hash_version", [1, 2])
def test_fetchsgd_count_sketch_update_is_k_sparse_and_counts_sketch_bytes(hash_version):
    sim = make_sim("fetchsgd", k=40, rows=3, cols=700, sketch_hash_version=hash_version)
    assert sim.rule.state.momentum.hash_version == hash_version
    start = sim.params.clone()
    row = sim.step()
    assert int((sim.params != start).sum()) == 40
    assert row["up_bytes"] == 5 * 3 * 700 * 4
    assert row["changed"] == 40


def test_fetchsgd_wide_sketch_agrees_with_true_topk_on_first_round():
    exact = make_sim("true_topk", k=100)
    wide = make_sim("fetchsgd", k=100, rows=5, cols=200_000)
    start = exact.params.clone()
    exact.step()
    wide.step()
    a = set(torch.nonzero(exact.params != start).flatten().tolist())
    b = set(torch.nonzero(wide.params != start).flatten().tolist())
    assert len(a & b) >= 95


@given(st.data())
def test_identity_sketch_matches_numpy(data):
    d = data.draw(st.integers(1, 60))
    floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    x = np.array(data.draw(st.lists(floats, min_size=d, max_size=d)), dtype=np.float32)
    idx = np.array(data.draw(st.lists(st.integers(0, d - 1), max_size=20)), dtype=np.int64)
    vals = np.array(data.draw(st.lists(floats, min_size=len(idx), max_size=len(idx))), dtype=np.float32)
    s = IdentitySketch(d).insert(x).insert_sparse(idx, vals)
    want = x.copy()
    np.add.at(want, idx, vals)
    np.testing.assert_array_equal(s.estimate_all(), want)
    k = data.draw(st.integers(1, d))
    top, v = s.topk(k)
    assert len(set(top.tolist())) == k
    mags = np.abs(want)
    assert np.all(np.abs(v) == mags[top])
    assert np.all(np.diff(np.abs(v)) <= 0)
    assert np.abs(v).min() >= np.sort(mags)[::-1][k - 1]
    with pytest.raises(SketchError):
        s.insert(np.full(d, np.nan, dtype=np.float32))
    np.testing.assert_array_equal(s.estimate_all(), want)  # a rejected insert changes nothing

"""The FetchSGD reference code's options: byte counting, local momentum, clipping, weight-decay
placement, epoch sampling.  Defaults are unchanged; each option is checked against a brute force
or an independent computation."""
import numpy as np
import pytest
import torch

from fedsim import ConfigError, Simulation, parse_config
from fedsim.accounting import Accountant


def _spec(rule="local_topk", train=None, data=None, **rule_kw):
    raw = {"data": dict({"dataset": "digits", "num_clients": 12}, **(data or {})),
           "train": dict({"rounds": 6, "clients_per_round": 3, "lr": 0.05, "threads": 1, "eval_every": 6},
                         **(train or {})),
           "rule": dict(dict(k=40, rows=3, cols=400, sketch_backend="numpy"), name=rule, **rule_kw),
           "output": {"progress": False, "checkpoint_every": 0, "plot": False}}
    (spec,) = parse_config(raw).runs()
    return spec


# ------------------------------------------------------------------------------ accounting
@pytest.mark.parametrize("rule, kw", [("local_topk", {}), ("fetchsgd", {"second_round": 2}),
                                      ("true_topk", {})])
def test_reference_accounting_matches_a_brute_force_count(rule, kw):
    """Per-client copies of the model: a client downloads 4 B per weight that differs from its copy."""
    sim = Simulation(_spec(rule, train={"accounting": "reference"}, **kw))
    honest = Simulation(_spec(rule, **kw), dataset=sim.dataset)
    copies = {c: sim.params.clone() for c in range(sim.num_clients)}  # everyone can rebuild round 0
    d, k = sim.d, 40
    for t in range(6):
        ids = sim.sample_clients(t)
        before = sim.params.clone()
        nnz = [int((copies[int(c)] != before).sum()) for c in ids]
        row, row_f = sim.step(), honest.step()
        for c in ids:
            copies[int(c)] = before.clone()
        assert row["down_bytes"] == sum(4 * n for n in nnz)
        assert row_f["down_bytes"] == sum(min(4 * d, 8 * n) for n in nnz) + (
            len(ids) * 2 * k * 4 if rule == "fetchsgd" else 0)
        if rule == "local_topk":
            assert (row["up_bytes"], row_f["up_bytes"]) == (len(ids) * k * 4, len(ids) * k * 8)
        elif rule == "fetchsgd":  # the sketch and the p k exact values; the candidate indices are free
            assert row["up_bytes"] == row_f["up_bytes"] == len(ids) * (3 * 400 + 2 * k) * 4
        else:
            assert row["up_bytes"] == row_f["up_bytes"] == len(ids) * d * 4
        torch.testing.assert_close(sim.params, honest.params, rtol=0, atol=0)  # counting only
    assert sim.result("ok", "").compression > honest.result("ok", "").compression


def test_accounting_option_is_validated():
    with pytest.raises(ConfigError, match="train.accounting must be one of"):
        _spec(train={"accounting": "paper"})
    with pytest.raises(ValueError, match="accounting must be one of"):
        Accountant(10, 2, 3, accounting="paper")
    assert Accountant(10, 2, 3).index_bytes == 4 and Accountant(10, 2, 3, accounting="reference").index_bytes == 0


# -------------------------------------------------------------------- local top-k local momentum
def _transcribe_round(sim, t, w, vel, err, rho_l, error_feedback):
    """NumPy transcription of one local top-k round with per-client momentum (no global momentum)."""
    from fedsim.clients import LoopEngine

    ids = sim.sample_clients(t)
    batches = [sim.client_batch(t, c) for c in ids]
    weights = sim._weights(batches).numpy()
    grads = LoopEngine().gradients(sim.model, torch.from_numpy(w), batches).numpy()
    payload = np.zeros_like(w)
    for c, g, wi in zip(ids, grads, weights):
        v = rho_l * vel.get(c, np.float32(0)) + g
        s = v + err.get(c, np.float32(0)) if error_feedback else v
        idx = np.argsort(-np.abs(s), kind="stable")[:sim.spec.rule.k]
        payload[idx] += wi * s[idx]
        if error_feedback:
            err[c] = s.copy()
            err[c][idx] = 0
        vel[c] = v.copy()
        vel[c][idx] = 0
    return payload


@pytest.mark.parametrize("error_feedback", [False, True])
def test_local_momentum_matches_a_transcription(error_feedback):
    kw = dict(local_momentum=0.9, local_error_feedback=error_feedback, global_momentum=False)
    sim = Simulation(_spec(train={"weight_decay": 0.0, "clients_per_round": 4}, data={"num_clients": 6}, **kw))
    w = sim.params.numpy().copy()
    vel, err = {}, {}
    for t in range(5):
        payload = _transcribe_round(sim, t, w, vel, err, np.float32(0.9), error_feedback)
        row = sim.step()
        w = (w - np.float32(row["lr"]) * payload).astype(np.float32)
        np.testing.assert_allclose(sim.params.numpy(), w, rtol=1e-4, atol=1e-6)
    # with only 6 clients, every client took part and holds a velocity zeroed where it sent
    vel_sim = sim.rule.state.velocities
    assert set(vel_sim) == set(range(6))
    for c, v in vel_sim.items():
        np.testing.assert_allclose(v.numpy(), vel[c], rtol=1e-4, atol=1e-6)
        assert int((v == 0).sum()) >= 40


def test_local_momentum_state_survives_a_checkpoint():
    a = Simulation(_spec(local_momentum=0.9))
    for _ in range(3):
        a.step()
    b = Simulation(_spec(local_momentum=0.9), dataset=a.dataset)
    b.rule.load_state_dict(a.rule.state_dict())
    b.params.copy_(a.params)
    b.t = a.t
    b.accountant.load_state_dict(a.accountant.state_dict())
    for _ in range(2):
        a.step()
        b.step()
    torch.testing.assert_close(a.params, b.params, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"rule.local_momentum must be in \[0, 1\)"):
        _spec(local_momentum=1.0)


# ------------------------------------------------------------------------------ clipping
def _norm_clip(g, c):
    """torch.nn.utils.clip_grad_norm_'s rule on a NumPy vector."""
    return g * min(1.0, c / (float(np.linalg.norm(g.astype(np.float64))) + 1e-6))


def test_clipping_clips_each_client_before_the_sum():
    """uncompressed, no momentum, no decay: update = lr * sum_i w_i clip(g_i)."""
    from fedsim.clients import LoopEngine

    train = {"clip_norm": 0.05, "weight_decay": 0.0}
    sim = Simulation(_spec("uncompressed", train=train, momentum=0.0))
    w0 = sim.params.clone()
    batches = [sim.client_batch(0, c) for c in sim.sample_clients(0)]
    grads = LoopEngine().gradients(sim.model, w0, batches).numpy()
    assert min(np.linalg.norm(g) for g in grads) > 0.05  # the clip is active for every client
    weights = sim._weights(batches).numpy()
    expected = sum(wi * _norm_clip(g, 0.05) for wi, g in zip(weights, grads))
    row = sim.step()
    np.testing.assert_allclose((w0 - sim.params).numpy(), row["lr"] * expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("rule, kw", [("fetchsgd", {}), ("uncompressed", {}), ("local_topk", {}),
                                      ("fedavg", {"local_epochs": 2, "local_batch_size": 40})])
def test_clipping_loop_engine_equals_vmap_engine(rule, kw):
    """The vmap engine's summed path uses per-client gradients when clipping: equal to the loop engine."""
    train = {"clip_norm": 0.05, "rounds": 3}
    loop = Simulation(_spec(rule, train=dict(train, engine="loop"), **kw))
    vm = Simulation(_spec(rule, train=dict(train, engine="vmap"), **kw), dataset=loop.dataset)
    plain = Simulation(_spec(rule, train={"rounds": 3}, **kw), dataset=loop.dataset)
    for _ in range(3):
        loop.step()
        vm.step()
        plain.step()
    torch.testing.assert_close(vm.params, loop.params, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(plain.params, loop.params, rtol=1e-4, atol=1e-6)  # clipping acted


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_fedavg_clips_every_local_step(engine):
    from fedsim.clients import make_engine
    from fedsim.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (4, 3)]
    got = make_engine(engine).local_train(model, flat, batches, lr=0.5, epochs=2, batch_size=2,
                                          weight_decay=1e-2, clip_norm=0.1)
    unclipped = make_engine(engine).local_train(model, flat, batches, lr=0.5, epochs=2, batch_size=2,
                                                weight_decay=1e-2)
    assert not torch.allclose(got, unclipped, rtol=1e-3, atol=1e-5)
    from fedsim.clients import LoopEngine
    for i, (x, y) in enumerate(batches):
        w = flat.clone()
        for _ in range(2):
            for lo in range(0, x.shape[0], 2):
                grad = LoopEngine().gradients(model, w, [(x[lo:lo + 2], y[lo:lo + 2])])[0].numpy()
                step = _norm_clip(grad, 0.1) + 1e-2 * w.numpy()
                w = w - 0.5 * torch.from_numpy(step.astype(np.float32))
        torch.testing.assert_close(got[i], w - flat, rtol=1e-4, atol=1e-6)


def test_clip_norm_is_validated():
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="train.clip_norm must be a (positive )?finite number"):
            _spec(train={"clip_norm": bad})


# ------------------------------------------------------------------- weight-decay placement
def test_client_weight_decay_is_wd_over_w_on_each_client():
    """uncompressed, no momentum: update = lr (sum_i w_i g_i + wd/W w); the aggregate placement has wd w."""
    from fedsim.clients import LoopEngine

    for placement, scale in (("aggregate", 1.0), ("client", 1.0 / 3)):
        sim = Simulation(_spec("uncompressed", train={"weight_decay": 0.5, "weight_decay_placement": placement},
                               momentum=0.0))
        w0 = sim.params.clone()
        batches = [sim.client_batch(0, c) for c in sim.sample_clients(0)]
        g = sim._weights(batches) @ LoopEngine().gradients(sim.model, w0, batches)
        row = sim.step()
        torch.testing.assert_close(w0 - sim.params, row["lr"] * (g + 0.5 * scale * w0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rule, kw", [("local_topk", {}), ("fetchsgd", {}), ("fedavg", {"local_epochs": 2}),
                                      ("true_topk", {})])
def test_client_placement_equals_aggregate_placement_with_wd_times_w(rule, kw):
    """wd/W on each client (W = 3, after clipping) runs exactly as the aggregate placement with
    wd/W, for per-client and summed paths alike: the placement divides the decay by W."""
    client = Simulation(_spec(rule, train={"weight_decay": 0.3, "weight_decay_placement": "client",
                                           "clip_norm": 0.05}, **kw))
    agg = Simulation(_spec(rule, train={"weight_decay": 0.1, "clip_norm": 0.05}, **kw), dataset=client.dataset)
    for _ in range(3):
        client.step()
        agg.step()
    torch.testing.assert_close(client.params, agg.params, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="train.weight_decay_placement must be one of"):
        _spec(train={"weight_decay_placement": "server"})


# ------------------------------------------------------------------------------ epoch sampling
@pytest.mark.parametrize("num_clients, w", [(12, 3), (14, 4)])
def test_epoch_sampling_visits_every_client_once_per_epoch(num_clients, w):
    sim = Simulation(_spec(train={"sampling": "epoch", "clients_per_round": w}, data={"num_clients": num_clients}))
    per_epoch = num_clients // w
    for epoch in range(3):
        ids = np.concatenate([sim.sample_clients(epoch * per_epoch + s) for s in range(per_epoch)])
        assert len(ids) == len(set(ids.tolist())) == per_epoch * w  # nobody twice; W * (N // W) visits
        if num_clients % w == 0:
            assert set(ids.tolist()) == set(range(num_clients))
    # a pure function of (seed, round): a fresh simulation (a resumed run, another rank) agrees,
    # in any query order
    fresh = Simulation(_spec(train={"sampling": "epoch", "clients_per_round": w}, data={"num_clients": num_clients}),
                       dataset=sim.dataset)
    for t in (7, 0, 7, 3, 11):
        assert np.array_equal(fresh.sample_clients(t), sim.sample_clients(t))
    assert not np.array_equal(sim.sample_clients(0), sim.sample_clients(per_epoch))  # epochs reshuffle


def test_random_sampling_is_unchanged_by_default():
    sim = Simulation(_spec())
    for t in range(3):
        expected = np.sort(np.random.default_rng([0, 1, t]).choice(12, 3, replace=False))
        assert np.array_equal(sim.sample_clients(t), expected)
    with pytest.raises(ConfigError, match="train.sampling must be one of"):
        _spec(train={"sampling": "cyclic"})

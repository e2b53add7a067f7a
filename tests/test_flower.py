"""fedsim's rules in Flower: an in-process run follows fedsim's own simulator; bytes; bad inputs; Ray.

A real ClientApp and a real Strategy exchange real ``flwr.app.Message`` objects through
``InProcessGrid`` (no network, no Ray).  Telemetry off; the Ray test skips without Ray.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
flwr = pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402

import fedsim.flower as ff  # noqa: E402
from fedsim import ClientUpdateError, ConfigError, Simulation, parse_config  # noqa: E402
from fedsim.models import build_model  # noqa: E402
from fedsim.rules import make_rule  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RULES = {
    "fetchsgd": {"name": "fetchsgd", "k": 50, "rows": 3, "cols": 500, "sketch_backend": "numpy"},
    "fetchsgd_identity": {"name": "fetchsgd", "k": 40, "sketch": "identity", "zeroing": "subtract",
                          "lr_placement": "after", "sketch_backend": "numpy"},
    "local_topk": {"name": "local_topk", "k": 30},
    "fedavg": {"name": "fedavg", "local_epochs": 2, "local_batch_size": 10, "server_momentum": True},
    "uncompressed": {"name": "uncompressed"},
}


def spec_for(rule, num_clients=12, **train):
    raw = {"data": {"dataset": "digits", "num_clients": num_clients},
           "train": {"rounds": 4, "clients_per_round": 4, "lr": 0.1, "eval_every": 4, "threads": 1, **train},
           "rule": dict(rule),
           "output": {"progress": False, "checkpoint_every": 0, "plot": False}}
    return parse_config(raw).runs()[0]


def simulate(spec):
    """fedsim's own run: (simulation, initial weights, per-round updates)."""
    sim = Simulation(spec)
    w0, updates = sim.params.clone(), []
    for _ in range(spec.train.rounds):
        before = sim.params.clone()
        sim.step()
        updates.append(before - sim.params)
    return sim, w0, updates


def loader(sim, spec):
    """``load(context)`` for make_client_app: a fresh model and the node's partition of sim's data."""
    ds = sim.dataset

    def load(context):
        model = build_model(spec.model.name, ds.input_shape, ds.num_classes)
        return (model, *sim.client_data(context.node_config["partition-id"]))

    return load


def nodes(n):
    return [{"partition-id": i, "num-partitions": n} for i in range(n)]


def test_fedsim_never_imports_flwr_and_a_missing_flwr_names_the_extra():
    code = ("import sys, fedsim, fedsim.simulator, fedsim.rules, fedsim.cli\n"
            "assert 'flwr' not in sys.modules, 'importing fedsim imported flwr'\n"
            "sys.modules['flwr'] = None\n"
            "try:\n    import fedsim.flower\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}).stdout
    assert "pip install 'sketchgrad[flower]'" in out


@pytest.mark.parametrize("name", sorted(RULES))
def test_in_process_run_follows_the_simulator(name):
    spec = spec_for(RULES[name])
    sim, w0, sim_updates = simulate(spec)
    rounds = []
    strategy = ff.RuleStrategy.from_spec(spec, sim.d, poll_interval=0.01,
                                         on_round=lambda r, u, m: rounds.append((r, u, m)))
    app = ff.make_server_app(strategy, w0, spec.train.rounds)
    # No node is connected during the first polls: the strategy must wait, not send to nobody.
    ff.run_in_process(app, ff.make_client_app(loader(sim, spec)), nodes(sim.num_clients), connect_after=3)

    assert [r for r, _, _ in rounds] == [1, 2, 3, 4]
    for (r, u, m), su in zip(rounds, sim_updates):
        scale = float(su.abs().max())
        assert scale > 0
        torch.testing.assert_close(u, su, atol=1e-5 * scale, rtol=0, msg=f"round {r}")
        if name.startswith("fetchsgd"):
            assert torch.equal(u != 0, su != 0), f"round {r}: another support than fedsim's"
        assert m["clients"] == spec.train.clients_per_round
    torch.testing.assert_close(strategy.weights, sim.params, atol=1e-5, rtol=1e-5)
    final = ff.weights_from_record(strategy.result.arrays, sim.d)
    assert torch.equal(final, strategy.weights)


def test_fetchsgd_bytes_are_the_payloads_sent():
    spec = spec_for(RULES["fetchsgd"], rounds=2)
    sim = Simulation(spec)
    metrics = []
    strategy = ff.RuleStrategy.from_spec(spec, sim.d, on_round=lambda r, u, m: metrics.append(m))
    ff.run_in_process(ff.make_server_app(strategy, sim.params, 2), ff.make_client_app(loader(sim, spec)),
                      nodes(sim.num_clients))
    W, table = spec.train.clients_per_round, 4 * spec.rule.rows * spec.rule.cols
    for m in metrics:
        assert m["rule-up-bytes"] == W * table
        # A .npy header and the key name per client, nothing else.
        assert 0 < m["up-bytes"] - W * table <= W * 200
        assert 0 < m["down-bytes"] - W * 4 * sim.d <= W * 200
        assert m["changed"] == spec.rule.k


def one_round(spec, sim, load=None):
    """A strategy after configure_train of round 1, the replies and the messages they answer."""
    strategy = ff.RuleStrategy.from_spec(spec, sim.d)
    grid = ff.InProcessGrid(ff.make_client_app(load or loader(sim, spec)), nodes(sim.num_clients))
    messages = strategy.configure_train(1, ff.weights_record(sim.params), flwr.app.ConfigRecord(), grid)
    replies = list(grid.send_and_receive(messages))
    by_id = {m.metadata.message_id: m for m in messages}
    return strategy, replies, [by_id[r.metadata.reply_to_message_id] for r in replies]


def test_nonfinite_sketch_is_rejected_before_the_server_state_changes():
    spec = spec_for(RULES["fetchsgd"])
    sim = Simulation(spec)
    strategy, replies, sent = one_round(spec, sim)
    table = replies[1].content["upload"]["table"].numpy().copy()
    table[0, 3] = np.nan
    bad = Message(RecordDict({"upload": ArrayRecord({"table": Array(table)}),
                              "metrics": MetricRecord({"num-examples": 5})}), reply_to=sent[1])
    state = [np.array(strategy.rule.state.momentum.table), np.array(strategy.rule.state.error.table)]
    with pytest.raises(ClientUpdateError, match="NaN or infinite"):
        strategy.aggregate_train(1, [replies[0], bad, *replies[2:]])
    assert np.array_equal(state[0], strategy.rule.state.momentum.table)
    assert np.array_equal(state[1], strategy.rule.state.error.table)


@pytest.mark.parametrize("change,match", [
    (lambda rec: rec["metrics"].__setitem__("num-examples", 0), "num-examples = 0"),
    (lambda rec: rec["upload"].__setitem__("table", Array(np.zeros((2, 7), np.float32))), "shape"),
    (lambda rec: rec.__delitem__("metrics"), "lacks"),
])
def test_malformed_replies_raise_clear_errors(change, match):
    spec = spec_for(RULES["fetchsgd"])
    sim = Simulation(spec)
    strategy, replies, _ = one_round(spec, sim)
    content = replies[0].content
    change(content)
    with pytest.raises(ClientUpdateError, match=match):
        strategy.aggregate_train(1, replies)


def test_failing_clients_are_skipped_and_a_round_without_replies_raises():
    spec = spec_for(RULES["local_topk"])
    sim = Simulation(spec)
    good = loader(sim, spec)

    def wrong_size(context):  # every node's model has another size than the server's
        model, x, y = good(context)
        return torch.nn.Linear(3, 2), x, y

    strategy, replies, _ = one_round(spec, sim, wrong_size)
    assert all(r.has_error() for r in replies)
    with pytest.raises(ff.FlowerRoundError, match="no usable reply.*trainable parameters"):
        strategy.aggregate_train(1, replies)

    calls = []

    def half_fail(context):  # the first two nodes called fail
        calls.append(context.node_id)
        if len(calls) <= 2:
            raise RuntimeError("battery low")
        return good(context)

    strategy, replies, _ = one_round(spec, sim, half_fail)
    failed = [r for r in replies if r.has_error()]
    assert len(failed) == 2 and "battery low" in failed[0].error.reason
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["clients"] == len(replies) - len(failed)
    assert not torch.equal(ff.weights_from_record(arrays), sim.params.cpu())


def test_too_few_nodes_raise_after_the_wait():
    spec = spec_for(RULES["fetchsgd"])
    sim = Simulation(spec)
    strategy = ff.RuleStrategy.from_spec(spec, sim.d, wait_timeout=0.05, poll_interval=0.01)
    grid = ff.InProcessGrid(ff.make_client_app(loader(sim, spec)), nodes(3))
    with pytest.raises(ff.FlowerRoundError, match="only 3 node.*needs 4"):
        strategy.configure_train(1, ff.weights_record(sim.params), flwr.app.ConfigRecord(), grid)


@pytest.mark.parametrize("rule,kw,match", [
    ({"name": "fetchsgd", "second_round": 2}, {}, "second_round"),
    ({"name": "local_topk", "local_error_feedback": True}, {}, "local_error_feedback"),
    ({"name": "fetchsgd"}, {"clients_per_round": 0}, "clients_per_round"),
    ({"name": "fetchsgd"}, {"weighting": "by_size"}, "weighting"),
    ({"name": "fetchsgd"}, {"lr": -1.0}, "lr"),
])
def test_unsupported_settings_raise_config_errors(rule, kw, match):
    cfg = spec_for(rule).rule
    args = {"lr": 0.1, "clients_per_round": 4, **kw}
    with pytest.raises(ConfigError, match=match):
        ff.RuleStrategy(make_rule(cfg, 1000, device="cpu"), **args)


def test_ray_simulation_follows_the_simulator():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'flwr[simulation]')")
    from flwr.simulation import run_simulation

    # Every client in every round: Ray's node ids are random, so only full participation
    # lets a run with Ray pick fedsim's clients.
    spec = spec_for(RULES["fetchsgd"], num_clients=6, clients_per_round=6, rounds=3, lr=0.05)
    sim, w0, _ = simulate(spec)
    strategy = ff.RuleStrategy.from_spec(spec, sim.d)
    run_simulation(ff.make_server_app(strategy, w0, spec.train.rounds), ff.make_client_app(loader(sim, spec)),
                   num_supernodes=sim.num_clients, backend_config={"client_resources": {"num_cpus": 1}})
    torch.testing.assert_close(ff.weights_from_record(strategy.result.arrays, sim.d), sim.params,
                               atol=1e-5, rtol=1e-5)


def test_changed_only_downloads_follow_the_simulator_with_fewer_bytes():
    spec = spec_for(RULES["fetchsgd"], num_clients=6, clients_per_round=3, rounds=5)
    sim, w0, sim_updates = simulate(spec)
    runs = {}
    for download in ("full", "changed"):
        metrics = []
        strategy = ff.RuleStrategy.from_spec(spec, sim.d, download=download,
                                             on_round=lambda r, u, m: metrics.append(m))
        grid = ff.run_in_process(ff.make_server_app(strategy, w0, spec.train.rounds),
                                 ff.make_client_app(loader(sim, spec)), nodes(sim.num_clients))
        torch.testing.assert_close(strategy.weights, sim.params, atol=1e-5, rtol=1e-5)
        runs[download] = (metrics, grid)
    full, changed = runs["full"][0], runs["changed"][0]
    seen, held = set(), []
    for t, (mf, mc) in enumerate(zip(full, changed)):
        picked = set(ff.RuleStrategy.from_spec(spec, sim.d).sample_nodes(runs["full"][1], t))
        returning = len(picked & seen)
        seen |= picked
        held.append(returning)
        assert mf["down-bytes"] == changed[0]["down-bytes"]  # full weights to each of W nodes
        if returning:  # each returning node gets <= 8 bytes per weight changed so far, plus headers
            assert mc["down-bytes"] < mf["down-bytes"]
            assert mc["down-bytes"] <= (spec.train.clients_per_round - returning) * (4 * sim.d + 200) \
                + returning * (8 * spec.rule.k * t + 400)
    assert sum(held) > 0, "no node took part twice: the test exercises nothing"
    # A node keeps the model of the last round it took part in (version v: after v updates).
    history = [w0.cpu()]
    for u in sim_updates:
        history.append(history[-1] - u.cpu())
    kept = 0
    for ctx in runs["changed"][1].contexts.values():
        if "fedsim.version" in ctx.state.config_records:
            v = int(ctx.state["fedsim.version"]["version"])
            w = ff.weights_from_record(ctx.state["fedsim.weights"], sim.d)
            torch.testing.assert_close(w, history[v], atol=1e-5, rtol=1e-5)
            kept += 1
    assert kept == len(seen)


def test_a_node_that_lost_its_weights_fails_once_then_gets_the_full_weights():
    spec = spec_for(RULES["local_topk"], num_clients=5, clients_per_round=5, rounds=3)
    sim = Simulation(spec)
    grid = ff.InProcessGrid(ff.make_client_app(loader(sim, spec)), nodes(sim.num_clients))
    metrics = []

    def on_round(r, update, m):
        metrics.append(m)
        if r == 1:  # node 2 restarts and forgets the weights it kept
            grid.contexts[2].state = RecordDict()

    strategy = ff.RuleStrategy.from_spec(spec, sim.d, download="changed", on_round=on_round)
    ff.make_server_app(strategy, sim.params, 3)(grid, flwr.app.Context(1, 0, {}, RecordDict(), {}))
    assert [m["clients"] for m in metrics] == [5, 4, 5]
    assert "fedsim.version" in grid.contexts[2].state.config_records


def test_step_from_sketch_without_exact_values_refuses_a_second_round_and_changes_nothing():
    spec = spec_for({"name": "fetchsgd", "k": 20, "rows": 3, "cols": 200, "second_round": 2,
                     "sketch_backend": "numpy"})
    rule = make_rule(spec.rule, 1000, device="cpu")
    s = rule.new_sketch()
    s.insert(np.linspace(-1, 1, 1000, dtype=np.float32))
    rule.state.momentum.insert(np.ones(1000, np.float32))
    before = np.array(rule.state.momentum.table), np.array(rule.state.error.table)
    with pytest.raises(ConfigError, match="second_round"):
        rule.step_from_sketch(s, 0.1)
    assert np.array_equal(before[0], rule.state.momentum.table)
    assert np.array_equal(before[1], rule.state.error.table)

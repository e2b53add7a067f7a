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

"""Communication accounting against brute force, and the uncompressed reference."""
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedsim import Simulation, parse_config
from fedsim.accounting import Accountant, reference_bytes


@given(st.data())
def test_download_counts_match_brute_force(data):
    d = data.draw(st.integers(1, 40))
    n_clients = data.draw(st.integers(1, 6))
    rounds = data.draw(st.integers(1, 8))
    acc = Accountant(d, n_clients, rounds)
    masks = []  # masks[r]: coordinates changed by round r
    seen = np.zeros(n_clients, dtype=int)
    for t in range(rounds):
        ids = np.array(sorted(data.draw(st.sets(st.integers(0, n_clients - 1), min_size=1))))
        got = acc.download(t, ids)
        for c, b in zip(ids, got):
            changed = np.zeros(d, bool)
            for r in range(seen[c], t):
                changed |= masks[r]
            nnz = int(changed.sum())
            assert b == min(4 * d, 8 * nnz)
            seen[c] = t
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=d, max_size=d)))
        update = torch.zeros(d)
        update[torch.from_numpy(mask)] = 1.5
        assert acc.record_update(t, update) == int(mask.sum())
        masks.append(mask)


def test_reference_bytes_formula():
    assert reference_bytes(10, 3, 1) == (120, 0)
    assert reference_bytes(10, 3, 4) == (480, 360)


def _spec(rule, **kw):
    raw = {"data": {"num_clients": 30}, "train": {"rounds": 5, "clients_per_round": 4, "threads": 1},
           "rule": dict(kw, name=rule, sketch_backend="numpy"), "output": {"progress": False}}
    (spec,) = parse_config(raw).runs()
    return spec


def test_uncompressed_run_has_compression_exactly_one():
    result = Simulation(_spec("uncompressed")).run()
    assert (result.up_bytes, result.down_bytes) == (result.ref_up_bytes, result.ref_down_bytes)
    assert result.compression == 1.0


def test_sparse_rules_count_indices_and_download_sparse():
    local = Simulation(_spec("local_topk", k=50, global_momentum=False))
    row = local.step()
    assert row["up_bytes"] == 4 * 50 * 8  # values and int32 indices
    assert row["down_bytes"] == 0  # nothing changed before round 1
    row = local.step()
    changed = local.history[0]["changed"]
    assert 0 < changed <= 4 * 50
    # every client of round 2 (new or back) holds round 1's starting weights: it
    # fetches round 1's changes as (value, index) pairs
    assert row["down_bytes"] == 4 * min(4 * local.d, 8 * changed)
    fetch = Simulation(_spec("fetchsgd", k=30, rows=3, cols=400))
    assert fetch.step()["up_bytes"] == 4 * 3 * 400 * 4


def test_dense_download_when_sparse_would_be_larger():
    acc = Accountant(10, 2, 3)
    acc.record_update(0, torch.ones(10))
    assert acc.download(1, np.array([0])) == [40]  # 10 changes: sparse 80 bytes > dense 40

"""The high-dimensional client-skewed task and the softmax-linear model (tiny sizes)."""
import numpy as np
import pytest
import torch

import fedsim
from fedsim.data import load_dataset, partition, synthetic_highdim
from fedsim.models import build_model, num_parameters

SMALL = dict(features=3000, classes=5, writers=60, samples_per_writer=3, num_test=200, active=32,
             home=40)


def test_deterministic_shapes_and_unit_rows():
    a = load_dataset("synthetic_highdim", seed=4, **SMALL)
    b = synthetic_highdim(seed=4, **SMALL)
    assert a.x_train.shape == (180, 3000) and a.x_test.shape == (200, 3000)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.writers_train, np.repeat(np.arange(60), 3))
    np.testing.assert_allclose(np.linalg.norm(a.x_train, axis=1), 1.0, rtol=1e-5)
    assert ((a.x_train != 0).sum(1) <= 32).all()
    c = synthetic_highdim(seed=5, **SMALL)
    assert not np.array_equal(a.x_train, c.x_train)
    # The per-class offsets keep the labels roughly balanced.
    assert np.bincount(a.y_train, minlength=5).max() < 0.45 * 180


def test_client_supports_are_concentrated():
    """A writer's samples share most of their features; two writers share few."""
    ds = synthetic_highdim(seed=0, **dict(SMALL, samples_per_writer=4, skew=0.75))
    supports = [set(np.flatnonzero((ds.x_train[ds.writers_train == w] != 0).any(0))) for w in range(60)]
    nnz = [set(np.flatnonzero(row)) for row in ds.x_train != 0]
    # Within a writer: a sample's features mostly recur in the writer's other samples.
    own = np.mean([len(nnz[i] & set().union(*(nnz[j] for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i)))
                   / len(nnz[i]) for i in range(len(nnz))])
    across = np.mean([len(supports[w] & supports[w + 1]) / len(supports[w]) for w in range(59)])
    assert own > 0.5 and across < 0.25, (own, across)
    # Heavy-tailed popularity: the 1% most used features hold a large share of all nonzeros.
    counts = np.sort((ds.x_train != 0).sum(0))[::-1]
    assert counts[:30].sum() > 0.1 * counts.sum()
    # skew = 0: every feature comes from the global law, so writers no longer own features.
    flat = synthetic_highdim(seed=0, **dict(SMALL, samples_per_writer=4, skew=0.0))
    own_flat = np.mean([len(set(np.flatnonzero(flat.x_train[4 * w] != 0)) & set(np.flatnonzero(flat.x_train[4 * w + 1] != 0)))
                        / max(1, (flat.x_train[4 * w] != 0).sum()) for w in range(60)])
    assert own_flat < own


@pytest.mark.parametrize("bad", [dict(features=1), dict(skew=1.5), dict(home=5000), dict(colour=3),
                                 dict(classes=True)])
def test_bad_options_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        load_dataset("synthetic_highdim", **dict(SMALL, **bad))


def test_linear_model_parameters_and_training():
    model = build_model("linear", (3000,), 5)
    assert num_parameters(model) == 3000 * 5 + 5
    ds = synthetic_highdim(seed=1, **SMALL)
    cfg = fedsim.load_config(None, ["data.dataset=synthetic_highdim", "data.partition=natural",
                                    "data.num_clients=60", "model.name=linear", "train.rounds=30",
                                    "train.clients_per_round=10", "train.lr=1.0", "train.eval_every=30",
                                    "train.threads=1"], single_rule="uncompressed")
    result = fedsim.Simulation(cfg.runs()[0], dataset=ds).run()
    losses = [r["train_loss"] for r in result.history]
    assert result.d == 15005
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert result.final_acc > 1.5 / 5  # chance is 1/5

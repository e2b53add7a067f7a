"""A high-dimensional, client-skewed classification task that a linear model learns on a CPU.

FetchSGD's regime needs a large model dimension d (so a sketch can compress the upload and
still hold the heavy hitters) and many clients a round; a softmax-linear model on many sparse
features reaches d >= 1M at a cost of a few milliseconds per client gradient.
"""
from __future__ import annotations

import numpy as np

from ._dataset import Dataset

__all__ = ["synthetic_highdim"]

# name: (default, lowest allowed value); every option is an integer except the floats below
_INT_OPTIONS = {"features": (50_000, 2), "classes": (20, 2), "writers": (1000, 1),
                "samples_per_writer": (2, 1), "num_test": (1000, 1), "active": (64, 1),
                "home": (64, 1)}
_FLOAT_OPTIONS = {"skew": (0.75, 0.0, 1.0), "zipf": (1.1, 0.0, 10.0), "importance": (0.5, 0.0, 10.0),
                  "signal": (20.0, 0.0, 1e6)}
OPTIONS = tuple(_INT_OPTIONS) + tuple(_FLOAT_OPTIONS)


def _check_options(opts):
    """Validated options dict (defaults filled in); ValueError names a bad one."""
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"synthetic_highdim takes no option(s) {', '.join(unknown)}; "
                         f"valid options: {', '.join(OPTIONS)}")
    out = {}
    for name, (default, low) in _INT_OPTIONS.items():
        v = opts.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"synthetic_highdim option {name} must be an integer >= {low}, got {v!r}")
        out[name] = int(v)
    for name, (default, low, high) in _FLOAT_OPTIONS.items():
        v = opts.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not low <= v <= high:
            raise ValueError(f"synthetic_highdim option {name} must be a number in [{low}, {high}], "
                             f"got {v!r}")
        out[name] = float(v)
    if out["home"] > out["features"]:
        raise ValueError(f"synthetic_highdim option home = {out['home']} exceeds features = "
                         f"{out['features']}")
    return out


def _samples(rng, owner, homes, popularity, teacher, o):
    """Features (float32, unit rows) and noisy class scores of samples owned by the writers in `owner`."""
    n, f = owner.shape[0], o["features"]
    n_home = int(round(o["skew"] * o["active"]))
    n_glob = o["active"] - n_home
    cols = np.concatenate([homes[owner[:, None], rng.integers(0, o["home"], (n, n_home))],
                           rng.choice(f, (n, n_glob), p=popularity)], axis=1)
    # Log-normal magnitudes: no ties, so a client's top-k is well defined.
    vals = np.exp(0.5 * rng.standard_normal(cols.shape)).astype(np.float32)
    x = np.zeros((n, f), dtype=np.float32)
    np.add.at(x, (np.repeat(np.arange(n), cols.shape[1]), cols.ravel()), vals.ravel())
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x /= norm
    # Teacher logits from the nonzeros only (x is sparse); linear, so repeated columns add up
    # exactly as np.add.at added them into x.
    logits = np.einsum("nac,na->nc", teacher[cols], vals) / norm
    gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, (n, o["classes"]))))
    return x, o["signal"] * logits + gumbel


def _balanced_offsets(scores, classes, steps=50):
    """Per-class offsets that make argmax(scores - b) roughly balanced over the classes."""
    b = np.zeros(classes)
    for _ in range(steps):
        freq = np.bincount(np.argmax(scores - b, axis=1), minlength=classes) / scores.shape[0]
        b += 0.5 * np.log(np.maximum(freq, 0.5 / scores.shape[0]) * classes)
    return b
    return x, y


def synthetic_highdim(seed: int = 0, **options) -> Dataset:
    """Sparse high-dimensional features with a client-skewed, heavy-tailed support.

    The generative model (every draw from `seed`):

    - Features have a global popularity ``p``: a Zipf law with exponent ``zipf`` over a random
      order of the features. A few features are in most samples: their weights collect most
      of the gradient mass of every round (the heavy hitters of the aggregated gradient).
    - A teacher ``T`` (features x classes): row ``f`` is N(0, 1) times
      ``(p_f / max p) ** importance``, so the popular features also matter most. A sample's
      label is drawn from ``softmax(signal * T^T x - b)`` (Gumbel-max), with per-class
      offsets ``b`` fitted on the training set so that the classes are roughly balanced: a
      linear model can learn it, and the Bayes accuracy is below 1.
    - Each writer (client) owns ``home`` features drawn at random. A sample of writer ``j``
      activates ``active`` features: ``round(skew * active)`` drawn from ``j``'s home features,
      the rest from the global popularity law. Magnitudes are log-normal, rows have unit
      l2 norm. A client's gradient is therefore supported mostly on its own features.
    - Writer ``j`` holds ``samples_per_writer`` training samples (``writers_train`` gives the
      writer: use ``data.partition = "natural"``); the ``num_test`` test samples come from
      writers drawn at random among the same writers.

    With ``features`` F and ``classes`` C a softmax-linear model has ``d = F * C + C``
    parameters (the defaults: d = 1,000,020).

    Parameters
    ----------
    seed : int
        Everything is a deterministic function of the seed and the options.
    **options
        ``features`` (50,000), ``classes`` (20), ``writers`` (1,000), ``samples_per_writer``
        (2), ``num_test`` (1,000), ``active`` (64 nonzeros a sample), ``home`` (64 features a
        writer), ``skew`` (0.75, in [0, 1]), ``zipf`` (1.1), ``importance`` (0.5),
        ``signal`` (20.0, logit scale).

    Returns
    -------
    Dataset
        Named ``"synthetic_highdim"``; ``x`` float32 ``(N, features)``, dense storage.

    Raises
    ------
    ValueError
        An unknown option or a value out of range; the message names it.
    """
    o = _check_options(options)
    teach_seq, home_seq, train_seq, test_seq = np.random.SeedSequence([int(seed), 7]).spawn(4)
    f, c = o["features"], o["classes"]
    rng_home = np.random.default_rng(home_seq)
    order = rng_home.permutation(f)
    popularity = np.empty(f)
    popularity[order] = 1.0 / np.arange(1, f + 1) ** o["zipf"]
    # Popular features also matter most: the teacher's scale is (popularity / max) ** importance.
    scale = (popularity / popularity.max()) ** o["importance"]
    popularity /= popularity.sum()
    teacher = np.random.default_rng(teach_seq).standard_normal((f, c)).astype(np.float32)
    teacher *= scale[:, None].astype(np.float32)
    homes = np.stack([rng_home.choice(f, o["home"], replace=False) for _ in range(o["writers"])])
    owner_train = np.repeat(np.arange(o["writers"]), o["samples_per_writer"])
    x_train, s_train = _samples(np.random.default_rng(train_seq), owner_train, homes, popularity,
                                teacher, o)
    rng_test = np.random.default_rng(test_seq)
    owner_test = rng_test.integers(0, o["writers"], o["num_test"])
    x_test, s_test = _samples(rng_test, owner_test, homes, popularity, teacher, o)
    # The most popular features would otherwise decide most labels: per-class offsets (fitted
    # on the training scores, applied to both splits) balance the classes.
    b = _balanced_offsets(s_train, c)
    y_train = np.argmax(s_train - b, axis=1).astype(np.int64)
    y_test = np.argmax(s_test - b, axis=1).astype(np.int64)
    return Dataset("synthetic_highdim", x_train, y_train, x_test, y_test, num_classes=c,
                   writers_train=owner_train.astype(np.int64))

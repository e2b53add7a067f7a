"""Client partitions: structural properties (hypothesis) and the skew each scheme promises."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fedsim.data import SCHEMES, partition


@st.composite
def labelled(draw, max_n=300, max_classes=12):
    """(labels, num_clients) with possibly unbalanced, possibly missing classes."""
    n = draw(st.integers(1, max_n))
    classes = draw(st.integers(1, max_classes))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    skew = rng.dirichlet(np.full(classes, draw(st.sampled_from([0.3, 1.0, 100.0]))))
    labels = rng.choice(classes, n, p=skew).astype(draw(st.sampled_from([np.int64, np.int32,
                                                                         np.uint8])))
    num_clients = draw(st.integers(1, n))
    return labels, num_clients


def _check_structure(parts, n, num_clients, cover):
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1 and len(p) > 0
        assert np.all(np.diff(p) > 0)  # sorted, no repeats
        assert p[0] >= 0 and p[-1] < n
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    if cover:
        assert len(joined) == n


@given(labelled(), st.integers(0, 1000))
def test_iid_structure(data, seed):
    labels, num_clients = data
    parts = partition(labels, num_clients, "iid", seed=seed)
    _check_structure(parts, len(labels), num_clients, cover=True)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@given(labelled(), st.integers(0, 1000), st.sampled_from([0.01, 0.5, 10.0]))
def test_dirichlet_structure(data, seed, alpha):
    labels, num_clients = data
    parts = partition(labels, num_clients, "dirichlet", seed=seed, alpha=alpha)
    _check_structure(parts, len(labels), num_clients, cover=True)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@given(labelled(), st.integers(0, 1000), st.integers(1, 4))
def test_pathological_structure(data, seed, cpc):
    labels, num_clients = data
    num_classes = len(np.unique(labels))
    assume(cpc <= num_classes and num_clients * cpc <= len(labels))
    parts = partition(labels, num_clients, "pathological", seed=seed, classes_per_client=cpc)
    _check_structure(parts, len(labels), num_clients, cover=num_clients * cpc >= num_classes)
    for p in parts:
        assert len(np.unique(labels[p])) <= cpc
    if cpc == 1:
        assert all(len(np.unique(labels[p])) == 1 for p in parts)


@given(st.integers(2, 10), st.integers(1, 30), st.integers(1, 10), st.integers(0, 1000))
def test_pathological_balanced_gives_exactly_cpc_classes(num_classes, per_class, cpc, seed):
    assume(cpc <= num_classes)
    labels = np.repeat(np.arange(num_classes), 3 * per_class)
    num_clients = max(1, len(labels) // (3 * cpc))
    parts = partition(labels, num_clients, "pathological", seed=seed, classes_per_client=cpc)
    _check_structure(parts, len(labels), num_clients, cover=num_clients * cpc >= num_classes)
    assert all(len(np.unique(labels[p])) == cpc for p in parts)


@given(labelled(), st.integers(0, 1000), st.sampled_from(SCHEMES[:3]), st.integers(1, 6))
def test_samples_per_client_exact(data, seed, scheme, spc):
    labels, num_clients = data
    num_clients = max(1, min(num_clients, len(labels) // spc))
    assume(num_clients * spc <= len(labels))
    kwargs = dict(seed=seed, samples_per_client=spc)
    if scheme == "pathological":
        counts = np.bincount(labels)
        assume((counts // spc).sum() >= num_clients)
    parts = partition(labels, num_clients, scheme, **kwargs)
    _check_structure(parts, len(labels), num_clients, cover=False)
    assert all(len(p) == spc for p in parts)


def test_paper_cifar_split():
    """FetchSGD's CIFAR-10 split: 10,000 clients x 5 images of a single class."""
    labels = np.repeat(np.arange(10), 5000)
    np.random.default_rng(0).shuffle(labels)
    parts = partition(labels, 10_000, "pathological", seed=1)
    _check_structure(parts, len(labels), 10_000, cover=True)
    assert {len(p) for p in parts} == {5}
    per_client = np.array([labels[p] for p in parts])
    assert np.all(per_client == per_client[:, :1])
    # Every class is spread over the same number of clients.
    np.testing.assert_array_equal(np.bincount(per_client[:, 0]), np.full(10, 1000))
    # The same with a fixed per-client size on a larger pool.
    parts = partition(labels, 1000, "pathological", seed=1, samples_per_client=5)
    assert {len(p) for p in parts} == {5}
    assert all(len(np.unique(labels[p])) == 1 for p in parts)


def _mean_dominant_fraction(labels, parts):
    return np.mean([np.bincount(labels[p]).max() / len(p) for p in parts])


def test_dirichlet_skew_follows_alpha():
    labels = np.repeat(np.arange(10), 300)
    iid = partition(labels, 60, "iid", seed=0)
    skewed = partition(labels, 60, "dirichlet", seed=0, alpha=0.05)
    mild = partition(labels, 60, "dirichlet", seed=0, alpha=1000.0)
    frac_iid = _mean_dominant_fraction(labels, iid)
    frac_skewed = _mean_dominant_fraction(labels, skewed)
    frac_mild = _mean_dominant_fraction(labels, mild)
    assert frac_skewed > 0.6
    assert frac_mild < 0.3 and frac_iid < 0.3
    classes_skewed = np.mean([len(np.unique(labels[p])) for p in skewed])
    classes_iid = np.mean([len(np.unique(labels[p])) for p in iid])
    assert classes_skewed < 0.5 * classes_iid


@given(st.integers(1, 30), st.integers(0, 1000), st.none() | st.integers(1, 5))
def test_natural_one_writer_per_client(num_writers, seed, spc):
    rng = np.random.default_rng(seed)
    writers = rng.integers(0, num_writers, 200) * 7 + 3  # arbitrary ids, maybe some unused
    labels = rng.integers(0, 5, 200)
    present = np.unique(writers)
    num_clients = int(rng.integers(1, len(present) + 1))
    parts = partition(labels, num_clients, "natural", seed=seed, writers=writers,
                      samples_per_client=spc)
    full = num_clients == len(present) and spc is None
    _check_structure(parts, 200, num_clients, cover=full)
    owners = [np.unique(writers[p]) for p in parts]
    assert all(len(o) == 1 for o in owners)
    assert len({int(o[0]) for o in owners}) == num_clients
    for p, o in zip(parts, owners):
        total = np.count_nonzero(writers == o[0])
        assert len(p) == (total if spc is None else min(total, spc))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_partition(scheme):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    writers = rng.integers(0, 40, 500)
    a = partition(labels, 20, scheme, seed=7, writers=writers)
    b = partition(labels, 20, scheme, seed=7, writers=writers)
    c = partition(labels, 20, scheme, seed=8, writers=writers)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


BAD = [
    (dict(num_clients=0), "num_clients"),
    (dict(num_clients=-3), "num_clients"),
    (dict(num_clients=2.0), "num_clients"),
    (dict(num_clients=11), "exceeds the number of samples"),
    (dict(scheme="shards"), "valid schemes"),
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=-1.0), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(classes_per_client=0), "classes_per_client"),
    (dict(scheme="pathological", classes_per_client=4), "exceeds the number of classes"),
    (dict(scheme="pathological", samples_per_client=3, classes_per_client=2),
     "multiple of classes_per_client"),
    (dict(scheme="pathological", num_clients=5, samples_per_client=2),
     "single-class shards"),
    (dict(samples_per_client=0), "samples_per_client"),
    (dict(samples_per_client=6), "exceeds the number of samples"),
    (dict(scheme="natural"), "writers"),
    (dict(scheme="natural", writers=np.zeros(4)), "shape of labels"),
    (dict(scheme="natural", writers=np.arange(10) % 3, num_clients=4), "3 writers"),
    (dict(labels=np.zeros((5, 2), np.int64)), "1-D"),
    (dict(labels=np.zeros(10)), "integers"),
    (dict(labels=np.zeros(0, np.int64)), "empty"),
]


@pytest.mark.parametrize("bad,match", BAD)
def test_bad_arguments(bad, match):
    args = dict(labels=np.arange(10) % 3, num_clients=2, scheme="iid", seed=0)
    args.update(bad)
    labels = args.pop("labels")
    num_clients = args.pop("num_clients")
    scheme = args.pop("scheme")
    with pytest.raises(ValueError, match=match):
        partition(labels, num_clients, scheme, **args)

"""Dataset loaders on tiny files of the real formats, written by the tests themselves."""
import gzip
import importlib.util
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import DATASETS, Dataset, load_dataset, partition, synthetic_cifar


def _standardized(x):
    """Reference per-channel standardization with float64 statistics of `x` itself."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = x.std(axis=axes, dtype=np.float64, keepdims=True)
    return mean, std


# ---------------------------------------------------------------- digits

def test_digits_shapes_range_and_stratified_split():
    ds = load_dataset("digits", seed=3)
    assert ds.num_train + ds.num_test == 1797
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1 and ds.x_train.max() > 0.9
    # Stratified: every class is split in the same proportion (within rounding).
    train_counts = np.bincount(ds.y_train, minlength=10)
    test_counts = np.bincount(ds.y_test, minlength=10)
    frac = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(frac - 0.2) < 0.01)
    # The split is a function of the seed, and the two halves do not share samples.
    again = load_dataset("digits", seed=3)
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    other = load_dataset("digits", seed=4)
    assert not np.array_equal(ds.y_test, other.y_test) or \
        not np.array_equal(ds.x_test, other.x_test)
    flat_train = {row.tobytes() for row in ds.x_train.reshape(ds.num_train, -1)}
    overlap = sum(row.tobytes() in flat_train for row in ds.x_test.reshape(ds.num_test, -1))
    assert overlap < 5  # the digits set holds a few exact duplicates, nothing more


def test_digits_embedded_copy_equals_scikit_learn():
    # Read scikit-learn's own data file without importing scikit-learn (a 3-5 s import).
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        pytest.skip("scikit-learn not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    ref = np.loadtxt(path, delimiter=",")
    ds = load_dataset("digits", seed=0)
    x = np.concatenate([ds.x_train, ds.x_test]).reshape(-1, 64) * 16
    y = np.concatenate([ds.y_train, ds.y_test])
    ours = np.column_stack([x, y])
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], ref[np.lexsort(ref.T)])


# ---------------------------------------------------------------- CIFAR

def _write_cifar_batch(path, data, labels, label_key, str_keys=False):
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    batch = {key("data"): data, key(label_key): list(labels), key("batch_label"): "x"}
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def _cifar_arrays(rng, n, classes):
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n)


@pytest.mark.parametrize("str_keys", [False, True])
@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-py"])
def test_cifar10_batches(tmp_path, subfolder, str_keys):
    rng = np.random.default_rng(0)
    folder = tmp_path / subfolder if subfolder else tmp_path
    folder.mkdir(exist_ok=True)
    parts = [_cifar_arrays(rng, 3 + i, 10) for i in range(5)]
    # One marked pixel: channel G, row 5, column 7 of the first image of batch 1.
    parts[0][0][0, 1024 + 32 * 5 + 7] = 255
    parts[0][0][0, 1024:2048][np.arange(1024) != 32 * 5 + 7] = 0
    for i, (data, labels) in enumerate(parts, start=1):
        _write_cifar_batch(folder / f"data_batch_{i}", data, labels, "labels", str_keys)
    test_data, test_labels = _cifar_arrays(rng, 4, 10)
    _write_cifar_batch(folder / "test_batch", test_data, test_labels, "labels", str_keys)

    ds = load_dataset("cifar10", tmp_path)
    raw = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32) / 255.0
    mean, std = _standardized(raw)
    np.testing.assert_allclose(ds.x_train, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, (test_data.reshape(-1, 3, 32, 32) / 255.0 - mean) / std,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, np.concatenate([p[1] for p in parts]))
    np.testing.assert_array_equal(ds.y_test, test_labels)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    green = ds.x_train[0, 1]
    assert np.unravel_index(np.argmax(green), green.shape) == (5, 7)
    assert np.all(np.delete(green.ravel(), 32 * 5 + 7) == green.min())


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 6), ("test", 3)):
        data, fine = _cifar_arrays(rng, n, 100)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": list(fine),
                         b"coarse_labels": list(fine // 5)}, f)
        if name == "train":
            train_fine = fine
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100
    np.testing.assert_array_equal(ds.y_train, train_fine)
    mean, std = _standardized(ds.x_train)
    np.testing.assert_allclose(mean.ravel(), 0, atol=1e-5)
    np.testing.assert_allclose(std.ravel(), 1, atol=1e-4)


def test_cifar_missing_files_named(tmp_path):
    _write_cifar_batch(tmp_path / "data_batch_1", *_cifar_arrays(np.random.default_rng(0), 2, 10),
                       "labels")
    with pytest.raises(FileNotFoundError, match="data_batch_2") as info:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(info.value) and "test_batch" in str(info.value)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path)


def test_cifar_bad_batch_is_value_error(tmp_path):
    for i in range(1, 6):
        _write_cifar_batch(tmp_path / f"data_batch_{i}",
                           np.zeros((2, 100), np.uint8), [0, 1], "labels")
    _write_cifar_batch(tmp_path / "test_batch", np.zeros((2, 3072), np.uint8), [0, 1], "labels")
    with pytest.raises(ValueError, match="3072"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------- MNIST

def _idx_bytes(array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, rng, compress, n_train=7, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        for kind, arr in zip(("images-idx3", "labels-idx1"), arrays[prefix]):
            name = f"{prefix}-{kind}-ubyte"
            blob = _idx_bytes(arr)
            if compress:
                (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("subfolder", ["", "MNIST/raw"])
def test_mnist_idx(tmp_path, compress, subfolder):
    rng = np.random.default_rng(2)
    arrays = _write_mnist(tmp_path / subfolder if subfolder else tmp_path, rng, compress)
    ds = load_dataset("mnist", tmp_path)
    raw_train = arrays["train"][0][:, None] / 255.0
    mean, std = _standardized(raw_train)
    np.testing.assert_allclose(ds.x_train, (raw_train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, (arrays["t10k"][0][:, None] / 255.0 - mean) / std,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, arrays["train"][1])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.writers_train is None


def test_mnist_corrupt_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)
    _write_mnist(tmp_path, np.random.default_rng(0), compress=False)
    images = tmp_path / "train-images-idx3-ubyte"
    blob = images.read_bytes()
    images.write_bytes(blob[:-5])
    with pytest.raises(ValueError, match="declares shape"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(b"\x01" + blob[1:])
    with pytest.raises(ValueError, match="magic"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------- FEMNIST

def _write_leaf(path, users, rng):
    data = {}
    for user, n in users.items():
        data[user] = {"x": rng.random((n, 784)).round(3).tolist(),
                      "y": rng.integers(0, 62, n).tolist()}
    blob = {"users": list(users), "num_samples": list(users.values()), "user_data": data}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(blob))
    return data


def test_femnist_leaf_json(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "data"
    a = _write_leaf(root / "train" / "all_data_0_train.json", {"f0002_11": 3, "f0001_40": 2}, rng)
    b = _write_leaf(root / "train" / "all_data_1_train.json", {"f0003_07": 4}, rng)
    _write_leaf(root / "test" / "all_data_0_test.json", {"f0002_11": 1, "f0003_07": 2}, rng)
    ds = load_dataset("femnist", tmp_path)
    assert ds.num_train == 9 and ds.num_test == 3
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 62
    # Files in sorted order, users in file order; writer ids number sorted user names.
    expected = [("f0002_11", a), ("f0001_40", a), ("f0003_07", b)]
    writer_of = {"f0001_40": 0, "f0002_11": 1, "f0003_07": 2}
    x = np.concatenate([np.asarray(d[u]["x"], np.float32) for u, d in expected])
    y = np.concatenate([d[u]["y"] for u, d in expected])
    w = np.concatenate([[writer_of[u]] * len(d[u]["y"]) for u, d in expected])
    np.testing.assert_array_equal(ds.x_train.reshape(9, 784), x)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.writers_train, w)
    assert ds.writers_train.dtype == np.int64
    parts = partition(ds.y_train, 3, "natural", seed=0, writers=ds.writers_train)
    assert sorted(len(p) for p in parts) == [2, 3, 4]


def test_femnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/\\*.json"):
        load_dataset("femnist", tmp_path)
    rng = np.random.default_rng(0)
    _write_leaf(tmp_path / "test" / "t.json", {"u": 1}, rng)
    bad = tmp_path / "train" / "t.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"users": ["u"], "user_data": {"u": {"x": [[0.5] * 10],
                                                                    "y": [1]}}}))
    with pytest.raises(ValueError, match="square"):
        load_dataset("femnist", tmp_path)
    bad.write_text(json.dumps({"users": ["u"], "user_data": {}}))
    with pytest.raises(ValueError, match="'u'"):
        load_dataset("femnist", tmp_path)


# ---------------------------------------------------------------- synthetic

def test_synthetic_deterministic_balanced_and_standardized():
    a = synthetic_cifar(300, 100, num_classes=10, seed=5)
    b = load_dataset("synthetic_cifar10", seed=5, num_train=300, num_test=100)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.input_shape == (3, 32, 32) and a.x_train.dtype == np.float32
    assert a.name == "synthetic_cifar10" and a.num_classes == 10
    np.testing.assert_array_equal(np.bincount(a.y_train), np.full(10, 30))
    mean, std = _standardized(a.x_train)
    np.testing.assert_allclose(mean.ravel(), 0, atol=1e-5)
    np.testing.assert_allclose(std.ravel(), 1, atol=1e-4)
    c = synthetic_cifar(300, 100, num_classes=10, seed=6)
    assert not np.allclose(a.x_train, c.x_train)
    # The test set's labels do not depend on the size of the training set.
    d = synthetic_cifar(500, 100, num_classes=10, seed=5)
    np.testing.assert_array_equal(a.y_test, d.y_test)


def test_synthetic_has_learnable_class_structure():
    ds = synthetic_cifar(2000, 500, num_classes=10, seed=0)
    # Correlating with class means of the training set must beat chance (10%) clearly,
    # and must lose to the training labels' own structure being shuffled away.
    x_tr = ds.x_train.reshape(ds.num_train, -1)
    x_te = ds.x_test.reshape(ds.num_test, -1)

    def centroid_accuracy(labels):
        means = np.stack([x_tr[labels == c].mean(0) for c in range(10)])
        return np.mean(np.argmax(x_te @ means.T, axis=1) == ds.y_test)

    learned = centroid_accuracy(ds.y_train)
    shuffled = centroid_accuracy(np.random.default_rng(0).permutation(ds.y_train))
    assert learned > 0.3 and shuffled < 0.2


def test_synthetic_cifar100_and_bad_sizes():
    ds = load_dataset("synthetic_cifar100", num_train=200, num_test=100)
    assert ds.num_classes == 100 and set(np.unique(ds.y_train)) == set(range(100))
    with pytest.raises(ValueError, match="num_train"):
        synthetic_cifar(0, 10)
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_cifar(10, 10, num_classes=1)


# ---------------------------------------------------------------- dispatch and container

def test_unknown_name_and_option():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="num_train"):
        load_dataset("digits", num_train=10)


def test_dataset_checks_shapes():
    x = np.zeros((4, 3), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="y_train"):
        Dataset("t", x, y[:3], x, y, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        Dataset("t", x, y, np.zeros((4, 5), np.float32), y, 2)
    with pytest.raises(ValueError, match="writers_train"):
        Dataset("t", x, y, x, y, 2, writers_train=np.zeros(3, np.int64))
    assert Dataset("t", x, y, x, y, 2).input_shape == (3,)

"""`load_dataset`: one entry point for every dataset by name."""
from __future__ import annotations

from ._dataset import Dataset
from ..errors import DataError

DATASETS = ("digits", "mnist", "femnist", "cifar10", "cifar100",
            "synthetic_cifar10", "synthetic_cifar100", "synthetic_highdim", "shakespeare")
_SYNTHETIC_OPTIONS = ("num_train", "num_test")
_HIGHDIM_OPTIONS = ("features", "classes", "writers", "samples_per_writer", "num_test", "active",
                    "home", "skew", "zipf", "importance", "signal")
_SHAKESPEARE_OPTIONS = ("seq_len", "max_chars_per_client", "min_chars_per_client", "max_test_sequences")


def load_dataset(name: str, root: str | None = None, *, seed: int = 0, **options) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : str
        One of:

        - ``"digits"``: scikit-learn's embedded 8x8 digits (1797 samples), float32
          ``(N, 1, 8, 8)`` in [0, 1], stratified 80/20 train/test split drawn with `seed`.
          Needs no files.
        - ``"mnist"``: the idx files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
          ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each may be ``.gz``) in
          `root`, ``root/mnist`` or ``root/MNIST/raw``.
        - ``"femnist"``: LEAF json files ``train/*.json`` and ``test/*.json`` under `root`
          (or ``root/data``); ``writers_train`` gives each training sample's writer.
          Pixels kept as LEAF stores them; 62 classes.
        - ``"cifar10"``: python batches ``data_batch_1..5`` and ``test_batch`` in `root` or
          ``root/cifar-10-batches-py``.
        - ``"cifar100"``: python files ``train`` and ``test`` (fine labels, 100 classes) in
          `root` or ``root/cifar-100-python``.
        - ``"synthetic_cifar10"`` / ``"synthetic_cifar100"``: see
          :func:`fedsim.data.synthetic_cifar`; options ``num_train`` (default 50,000) and
          ``num_test`` (default 10,000); deterministic from `seed`.
        - ``"synthetic_highdim"``: sparse high-dimensional features with a client-skewed,
          heavy-tailed support, for a softmax-linear model (``model.name = "linear"``;
          d = features * classes + classes, about 1M by default); one writer per client
          (``data.partition = "natural"``). See :func:`fedsim.data.synthetic_highdim` for its
          options; deterministic from `seed`.
        - ``"shakespeare"``: the packaged tiny Shakespeare, next-character prediction, one
          client per speaker (``writers_train``), train/test split by position inside each
          speaker; options ``seq_len`` (80), ``max_chars_per_client``,
          ``min_chars_per_client``, ``max_test_sequences``: see
          :func:`fedsim.data._shakespeare.load_shakespeare`. Needs no files.

        CIFAR and MNIST pixels are scaled to [0, 1] and then standardized per channel with
        the training set's mean and standard deviation (applied to both splits).
    root : str or path, optional
        Folder of the files; default ``$FEDSIM_DATA`` or ``./data``.
    seed : int
        Seed of the digits split and of the synthetic data; file datasets keep their
        official splits.
    **options
        Only for the synthetic datasets: ``num_train``, ``num_test`` (CIFAR-shaped), or the
        options of :func:`fedsim.data.synthetic_highdim`; and for shakespeare its text options.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Unknown name or option, or a file that is not in the expected format (a ValueError).
    DataFileMissing
        The files are missing (a DataError and a FileNotFoundError); the message names them and the folders searched.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    synthetic = name.startswith("synthetic_")
    if synthetic:
        allowed = _HIGHDIM_OPTIONS if name == "synthetic_highdim" else _SYNTHETIC_OPTIONS
    else:
        allowed = _SHAKESPEARE_OPTIONS if name == "shakespeare" else ()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"dataset {name!r} takes no option(s) {', '.join(unknown)}; "
                        f"valid options: {', '.join(allowed) or 'none'}")
    if name == "digits":
        from ._digits import load_digits_dataset
        return load_digits_dataset(seed)
    if name == "shakespeare":
        from ._shakespeare import load_shakespeare
        return load_shakespeare(**options)
    if name == "mnist":
        from ._mnist import load_mnist
        return load_mnist(root)
    if name == "femnist":
        from ._femnist import load_femnist
        return load_femnist(root)
    if name in ("cifar10", "cifar100"):
        from ._cifar import load_cifar
        return load_cifar(name, root)
    if name == "synthetic_highdim":
        from ._highdim import synthetic_highdim
        return synthetic_highdim(seed=seed, **options)
    from ._synthetic import synthetic_cifar
    return synthetic_cifar(num_classes=int(name[len("synthetic_cifar"):]), seed=seed, **options)

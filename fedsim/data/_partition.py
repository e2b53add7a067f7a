"""Splitting a training set among federated clients (iid and the usual non-iid schemes)."""
from __future__ import annotations

import math

import numpy as np
from ..errors import DataError

SCHEMES = ("iid", "dirichlet", "pathological", "natural")


def partition(labels: np.ndarray, num_clients: int, scheme: str, *, seed: int,
              alpha: float = 0.5, classes_per_client: int = 1,
              writers: np.ndarray | None = None,
              samples_per_client: int | None = None) -> list[np.ndarray]:
    """Split sample indices among clients.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label of every training sample, shape ``(N,)``.
    num_clients : int
        Number of clients, ``1 <= num_clients <= N``.
    scheme : str
        - ``"iid"``: a uniformly random split into near-equal parts.
        - ``"dirichlet"``: label skew. Each client draws class proportions
          ``q ~ Dir(alpha * 1)`` and fills its quota with samples of those classes, drawn
          without replacement; once a class runs out its share goes to the classes left
          (Hsu et al., 2019). Small `alpha` gives few classes per client.
        - ``"pathological"``: each client holds ``classes_per_client`` shards, each of one
          class. Every class is cut into shards (in proportion to its size, at least one
          each while there are enough shards) and client ``j`` takes shards ``j``,
          ``j + num_clients``, ... of the class-grouped list, so its shards come from
          distinct classes unless one class holds more than ``1/classes_per_client`` of the
          data. With ``classes_per_client=1`` on CIFAR-10 and 10,000 clients this is the
          FetchSGD paper's split: 5 images of a single class per client.
        - ``"natural"``: one client per writer id in `writers`; with fewer clients than
          writers, a random subset of the writers.
    seed : int
        Seed of every random choice; equal arguments give equal partitions.
    alpha : float
        Dirichlet concentration (``> 0``), used by ``"dirichlet"``.
    classes_per_client : int
        Shards (classes) per client, used by ``"pathological"``.
    writers : numpy.ndarray, optional
        Writer id of every sample, shape ``(N,)``; required by ``"natural"``.
    samples_per_client : int, optional
        Give every client exactly this many samples (``"natural"``: at most this many,
        a random subset of the writer's). The rest of the data goes unused. Default: use
        every sample, clients as equal as the scheme allows.

    Returns
    -------
    list of numpy.ndarray
        ``num_clients`` non-empty, pairwise disjoint, sorted int64 index arrays. Without
        `samples_per_client`, ``"iid"`` and ``"dirichlet"`` cover every index, as does
        ``"pathological"`` when ``num_clients * classes_per_client`` is at least the number
        of classes, and ``"natural"`` when there is a client for every writer.

    Raises
    ------
    DataError
        An unknown scheme or a bad argument; the message names it.
    """
    labels = _check_labels(labels)
    n = labels.shape[0]
    num_clients = _check_int("num_clients", num_clients, 1)
    if scheme not in SCHEMES:
        raise DataError(f"unknown partition scheme {scheme!r}; valid schemes: "
                        f"{', '.join(SCHEMES)}")
    if num_clients > n:
        raise DataError(f"num_clients={num_clients} exceeds the number of samples ({n}); "
                        f"every client needs at least one")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) \
            or not math.isfinite(alpha) or alpha <= 0:
        raise DataError(f"alpha must be a finite number > 0, got {alpha!r}")
    classes_per_client = _check_int("classes_per_client", classes_per_client, 1)
    if samples_per_client is not None:
        samples_per_client = _check_int("samples_per_client", samples_per_client, 1)
        if scheme != "natural" and num_clients * samples_per_client > n:
            raise DataError(f"num_clients * samples_per_client = "
                            f"{num_clients * samples_per_client} exceeds the number of "
                            f"samples ({n})")
    if writers is not None:
        writers = np.asarray(writers)
        if writers.shape != labels.shape:
            raise DataError(f"writers must have the shape of labels {labels.shape}, "
                            f"got {writers.shape}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _iid(n, num_clients, samples_per_client, rng)
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, num_clients, float(alpha), samples_per_client, rng)
    elif scheme == "pathological":
        parts = _pathological(labels, num_clients, classes_per_client, samples_per_client, rng)
    else:
        if writers is None:
            raise DataError("the 'natural' scheme needs writers= (a writer id per sample, "
                            "e.g. Dataset.writers_train)")
        parts = _natural(writers, num_clients, samples_per_client, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _check_int(name, value, low):
    """`value` as int if it is an integer >= `low`, else DataError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_labels(labels):
    """Labels as a 1-D integer array, else DataError."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size == 0:
        raise DataError("labels is empty: there is nothing to partition")
    if labels.dtype.kind not in "iu":
        raise DataError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def _equal_sizes(total, parts):
    """`parts` sizes summing to `total`, differing by at most one."""
    sizes = np.full(parts, total // parts, dtype=np.int64)
    sizes[: total % parts] += 1
    return sizes


def _iid(n, num_clients, spc, rng):
    """Uniformly random near-equal split."""
    perm = rng.permutation(n)
    if spc is not None:
        return list(perm[: num_clients * spc].reshape(num_clients, spc))
    return np.array_split(perm, num_clients)


def _dirichlet(labels, num_clients, alpha, spc, rng):
    """Per-client class mix q ~ Dir(alpha), filled without replacement from class pools."""
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    taken = np.zeros(len(classes), dtype=np.int64)
    remaining = np.array([len(p) for p in pools], dtype=np.int64)
    sizes = (np.full(num_clients, spc, dtype=np.int64) if spc is not None
             else _equal_sizes(len(labels), num_clients))
    parts = []
    for size in sizes:
        q = np.nan_to_num(rng.dirichlet(np.full(len(classes), alpha)))
        counts = np.zeros(len(classes), dtype=np.int64)
        need = int(size)
        # Redraw the shortfall while a wanted class is exhausted; each pass takes >= 1 sample.
        while need > 0:
            avail = remaining - counts
            weights = q * (avail > 0)
            if weights.sum() <= 0:
                weights = (avail > 0).astype(np.float64)
            draw = np.minimum(rng.multinomial(need, weights / weights.sum()), avail)
            counts += draw
            need -= int(draw.sum())
        part = [pools[c][taken[c]: taken[c] + counts[c]] for c in np.flatnonzero(counts)]
        taken += counts
        remaining -= counts
        parts.append(np.concatenate(part))
    return parts


def _apportion(total, weights, caps, rng):
    """Integers s <= caps summing to `total`, about proportional to weights, >= 1 where possible."""
    shares = np.zeros(len(weights), dtype=np.int64)
    eligible = np.flatnonzero(caps >= 1)
    if total < len(eligible):
        shares[rng.choice(eligible, total, replace=False)] = 1
        return shares
    shares[eligible] = 1
    left = total - len(eligible)
    while left > 0:
        room = caps - shares
        w = weights * (room > 0)
        ideal = left * w / w.sum()
        add = np.minimum(np.floor(ideal).astype(np.int64), room)
        if add.sum() == 0:
            # Largest remainders first, one each, among classes with room.
            order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
            order = order[room[order] > 0][:left]
            add[order] = 1
        shares += add
        left -= int(add.sum())
    return shares


def _pathological(labels, num_clients, cpc, spc, rng):
    """Class shards, `cpc` per client, dealt with stride num_clients over a class-grouped list."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if cpc > len(classes):
        raise DataError(f"classes_per_client={cpc} exceeds the number of classes in the "
                        f"labels ({len(classes)})")
    num_shards = num_clients * cpc
    if spc is not None:
        if spc % cpc:
            raise DataError(f"samples_per_client={spc} must be a multiple of "
                            f"classes_per_client={cpc} for the 'pathological' scheme")
        shard_size = spc // cpc
        caps = counts // shard_size
    else:
        shard_size = None
        caps = counts.copy()
    if caps.sum() < num_shards:
        raise DataError(f"the labels hold only {caps.sum()} single-class shards of "
                        f"{shard_size or 1} sample(s), {num_shards} needed "
                        f"(num_clients * classes_per_client)")
    shares = _apportion(num_shards, counts.astype(np.float64), caps, rng)
    shards = []
    for c in rng.permutation(len(classes)):
        if shares[c] == 0:
            continue
        idx = rng.permutation(np.flatnonzero(inverse == c))
        if shard_size is not None:
            shards.extend(idx[: shares[c] * shard_size].reshape(shares[c], shard_size))
        else:
            shards.extend(np.array_split(idx, shares[c]))
    parts = [np.concatenate(shards[j::num_clients]) for j in range(num_clients)]
    return [parts[j] for j in rng.permutation(num_clients)]


def _natural(writers, num_clients, spc, rng):
    """One client per writer (a random subset of writers when there are more of them)."""
    ids, inverse = np.unique(writers, return_inverse=True)
    inverse = inverse.reshape(-1)
    if num_clients > len(ids):
        raise DataError(f"the 'natural' scheme has one client per writer: {len(ids)} writers, "
                        f"but num_clients={num_clients}")
    chosen = np.arange(len(ids)) if num_clients == len(ids) else \
        np.sort(rng.choice(len(ids), num_clients, replace=False))
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(ids) + 1))
    parts = []
    for w in chosen:
        idx = order[bounds[w]: bounds[w + 1]]
        if spc is not None and len(idx) > spc:
            idx = rng.choice(idx, spc, replace=False)
        parts.append(idx)
    return parts

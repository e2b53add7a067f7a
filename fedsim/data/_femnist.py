"""FEMNIST in LEAF's json format, with one writer id per training sample."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ._dataset import Dataset
from ._files import default_root
from ..errors import DataError, DataFileMissing

NUM_CLASSES = 62  # digits, upper- and lower-case letters


def _json_files(folder: Path):
    """Sorted json files of a LEAF split folder."""
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _find_root(root) -> Path:
    """Folder holding train/*.json and test/*.json, trying LEAF's own data/ layout too."""
    root = default_root() if root is None else Path(root)
    candidates = [root, root / "data", root / "femnist", root / "femnist" / "data"]
    for folder in candidates:
        if _json_files(folder / "train") and _json_files(folder / "test"):
            return folder
    raise DataFileMissing(
        f"femnist: expected LEAF json files train/*.json and test/*.json under one folder; "
        f"searched {', '.join(str(c) for c in candidates)}. Pass root=<folder>.")


def _read_split(folder: Path):
    """(x float32 (N, 1, s, s), y int64, user name per sample) of every json in `folder`."""
    xs, ys, users = [], [], []
    for path in _json_files(folder):
        with open(path) as f:
            try:
                blob = json.load(f)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} is not valid json: {exc}") from exc
        if not isinstance(blob, dict) or "users" not in blob or "user_data" not in blob:
            raise DataError(f"{path} is not a LEAF file: needs keys 'users' and 'user_data'")
        for user in blob["users"]:
            try:
                record = blob["user_data"][user]
                x, y = record["x"], record["y"]
            except (KeyError, TypeError) as exc:
                raise DataError(f"{path}: user {user!r} lacks user_data with 'x' and 'y'") \
                    from exc
            if len(x) != len(y):
                raise DataError(f"{path}: user {user!r} has {len(x)} samples but "
                                f"{len(y)} labels")
            # Convert per user: python float lists of a whole split would need ~20 GB.
            try:
                x = np.asarray(x, dtype=np.float32).reshape(len(y), -1)
            except ValueError as exc:
                raise DataError(f"{path}: user {user!r} has ragged or non-numeric samples") \
                    from exc
            xs.append(x)
            ys.append(np.asarray(y, dtype=np.int64).reshape(-1))
            users.extend([user] * len(y))
        del blob
    if not users:
        raise DataError(f"{folder}: the LEAF files hold no samples")
    widths = sorted({x.shape[1] for x in xs if len(x)})
    width = widths[0] if len(widths) == 1 else 0
    side = math.isqrt(width)
    if side == 0 or side * side != width:
        raise DataError(f"{folder}: every sample must be a flat square image (784 floats for "
                        f"28x28), got sample lengths {widths}")
    x = np.concatenate([x for x in xs if len(x)])
    y = np.concatenate(ys)
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        raise DataError(f"{folder}: labels must lie in [0, {NUM_CLASSES}), "
                         f"found {y.min()}..{y.max()}")
    return x.reshape(-1, 1, side, side), y, users


def load_femnist(root=None) -> Dataset:
    """FEMNIST as LEAF ships it; pixel values kept as given (LEAF: floats in [0, 1]).

    ``writers_train`` numbers the training users 0..W-1 in sorted order of their names.
    """
    folder = _find_root(root)
    x_train, y_train, users = _read_split(folder / "train")
    x_test, y_test, _ = _read_split(folder / "test")
    _, writers = np.unique(np.asarray(users), return_inverse=True)
    return Dataset("femnist", x_train, y_train, x_test, y_test, num_classes=NUM_CLASSES,
                   writers_train=writers.astype(np.int64).reshape(-1))

"""Finding a dataset's files on disk, with errors that say what was expected where."""
from __future__ import annotations

import os
from pathlib import Path
from ..errors import DataFileMissing

ROOT_ENV = "FEDSIM_DATA"


def default_root() -> Path:
    """The data folder used when none is given: $FEDSIM_DATA, else ./data."""
    return Path(os.environ.get(ROOT_ENV, "data"))


def find_folder(dataset: str, root, subfolders, required) -> Path:
    """First of `root`, `root/sub...` holding every file in `required`; DataFileMissing else.

    A required name matches itself or its ``.gz`` form.
    """
    root = default_root() if root is None else Path(root)
    candidates = [root] + [root / sub for sub in subfolders]
    for folder in candidates:
        if all(resolve(folder, name) is not None for name in required):
            return folder
    searched = ", ".join(str(c) for c in candidates)
    missing = [n for n in required if resolve(candidates[0], n) is None]
    raise DataFileMissing(
        f"{dataset}: expected the files {', '.join(required)} in one folder; searched {searched} "
        f"(missing in {root}: {', '.join(missing)}). Pass root=<folder> or set ${ROOT_ENV}.")


def resolve(folder: Path, name: str):
    """Path of `name` (or `name`.gz) in `folder`, or None."""
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None

"""The on-disk layout of an experiment: one folder per run under the experiment folder.

::

    <output.dir>/<output.name>/          (or --out)
        results.csv results.json table.txt config.toml compression.png curves.png
        <run folder>/                    (run_folder_name(label))
            checkpoint.ckpt  metrics.csv|metrics.jsonl  summary.json  final_params.pt

Every module that reads or writes these files (simulator, distributed, report)
takes the names from here.

Run folders are unique: :func:`check_run_folders` refuses (``ConfigError`` naming
both labels) two labels of one experiment whose folders would be the same
(``"fs a"`` and ``"fs_a"``, or names that differ only in case, which are one
folder on macOS and Windows), and labels whose folder would be ``.``/``..``, a
hidden name or one of the experiment's own files.  Refusing keeps every existing
folder name as it was; a label too long for a file name is cut and given a short
hash of the whole label, so it stays unique.
"""
import hashlib
from pathlib import Path

from .errors import ConfigError

__all__ = ["CHECKPOINT_NAME", "SUMMARY_NAME", "PROVENANCE_NAME", "TENSORBOARD_DIR", "FINAL_PARAMS_NAME",
           "RESULTS_JSON", "RESULTS_CSV", "TABLE_NAME",
           "CONFIG_NAME", "COMPRESSION_PLOT", "CURVES_PLOT", "metrics_name", "run_folder_name", "run_dir",
           "experiment_dir", "check_run_folders", "LOCK_NAME"]

CHECKPOINT_NAME = "checkpoint.ckpt"
SUMMARY_NAME = "summary.json"
PROVENANCE_NAME = "provenance.json"
TENSORBOARD_DIR = "tensorboard"
FINAL_PARAMS_NAME = "final_params.pt"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
TABLE_NAME = "table.txt"
CONFIG_NAME = "config.toml"
COMPRESSION_PLOT = "compression.png"
CURVES_PLOT = "curves.png"
LOCK_NAME = ".fedsim.lock"
_EXPERIMENT_FILES = (RESULTS_JSON, RESULTS_CSV, TABLE_NAME, CONFIG_NAME, COMPRESSION_PLOT, CURVES_PLOT)
# File names may have 255 bytes; longer folder names are cut here and get a hash of the label.
_MAX_NAME_BYTES = 200


def metrics_name(fmt):
    """The per-round metrics file name of a format.

    Parameters
    ----------
    fmt : {"csv", "jsonl"}

    Returns
    -------
    str
        ``metrics.csv`` or ``metrics.jsonl``.
    """
    return f"metrics.{fmt}"


def run_folder_name(label):
    """A folder name for a run label (``]`` dropped, characters outside ``[A-Za-z0-9-_.=,]`` -> ``_``).

    A name longer than 200 bytes (UTF-8) is cut and ends with ``-`` and 12 hex
    digits of the label's SHA-256, so it fits a file name and stays unique.
    Different labels can still give one name (``"fs a"``, ``"fs_a"``):
    :func:`check_run_folders` refuses those.

    Parameters
    ----------
    label : str
        E.g. ``fetchsgd[k=50,cols=1000]``.

    Returns
    -------
    str
    """
    name = "".join(ch if ch.isalnum() or ch in "-_.=," else "_" for ch in label.replace("]", ""))
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        tag = "-" + hashlib.sha256(label.encode("utf-8")).hexdigest()[:12]
        cut = name.encode("utf-8")[:_MAX_NAME_BYTES - len(tag)].decode("utf-8", "ignore")
        name = cut + tag
    return name


def check_run_folders(labels):
    """Refuse labels whose run folders would collide or escape the experiment folder.

    Parameters
    ----------
    labels : sequence of str
        The run labels of one experiment (distinct).

    Returns
    -------
    dict
        Label -> folder name.

    Raises
    ------
    ConfigError
        Two labels map to one folder (compared without case: one folder on
        case-insensitive filesystems), or a label's folder would be empty,
        ``.``/``..``, hidden (leading ``.``) or one of the experiment's files;
        the message names the labels.
    """
    names, seen = {}, {}
    reserved = {n.casefold() for n in _EXPERIMENT_FILES}
    for label in labels:
        name = run_folder_name(label)
        if not name or name.startswith(".") or name.casefold() in reserved:
            raise ConfigError(f"run label {label!r} would use the folder name {name!r}, which is "
                              f"{'empty' if not name else 'hidden or reserved'}; rename the method (label = ...)")
        other = seen.get(name.casefold())
        if other is not None and other != label:
            raise ConfigError(f"run labels {other!r} and {label!r} would share the run folder {name!r} "
                              f"(characters outside [A-Za-z0-9-_.=,] become '_', and case is ignored); "
                              f"give the methods labels that differ in letters or digits")
        seen[name.casefold()] = label
        names[label] = name
    return names


def run_dir(root, label):
    """The folder of run ``label`` in experiment folder ``root``.

    Parameters
    ----------
    root : str or Path
    label : str

    Returns
    -------
    Path
    """
    return Path(root) / run_folder_name(label)


def experiment_dir(output, out_dir=None):
    """The experiment folder: ``out_dir`` when given, else ``output.dir / output.name``.

    Parameters
    ----------
    output : fedsim.config.OutputConfig
    out_dir : str or Path, optional

    Returns
    -------
    Path
    """
    return Path(out_dir) if out_dir is not None else Path(output.dir) / output.name

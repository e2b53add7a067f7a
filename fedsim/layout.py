"""The on-disk layout of an experiment: one folder per run under the experiment folder.

::

    <output.dir>/<output.name>/          (or --out)
        results.csv results.json table.txt config.toml compression.png curves.png
        <run folder>/                    (run_folder_name(label))
            checkpoint.ckpt  metrics.csv|metrics.jsonl  summary.json  final_params.pt

Every module that reads or writes these files (simulator, distributed, report)
takes the names from here.
"""
from pathlib import Path

__all__ = ["CHECKPOINT_NAME", "SUMMARY_NAME", "PROVENANCE_NAME", "TENSORBOARD_DIR", "FINAL_PARAMS_NAME", "RESULTS_JSON", "RESULTS_CSV", "TABLE_NAME",
           "CONFIG_NAME", "COMPRESSION_PLOT", "CURVES_PLOT", "metrics_name", "run_folder_name", "run_dir",
           "experiment_dir"]

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

    Parameters
    ----------
    label : str
        E.g. ``fetchsgd[k=50,cols=1000]``.

    Returns
    -------
    str
    """
    return "".join(ch if ch.isalnum() or ch in "-_.=," else "_" for ch in label.replace("]", ""))


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

"""Results on disk and on screen: per-round metrics (CSV/JSONL), the final table, PNG plots."""
import csv
import io
import json
import math
import sys
from pathlib import Path

from ._atomic import atomic_write_text
from .errors import MissingDependency, RunFileError
from .layout import (COMPRESSION_PLOT, CONFIG_NAME, CURVES_PLOT, RESULTS_CSV, RESULTS_JSON, TABLE_NAME,
                     metrics_name)

__all__ = ["MetricsWriter", "read_metrics", "format_table", "write_experiment", "plot_experiment"]

FIELDS = ["round", "lr", "train_loss", "test_loss", "test_acc", "up_bytes", "down_bytes", "total_up",
          "total_down", "changed", "compression"]


class MetricsWriter:
    """Per-round metrics of one run in ``metrics.csv`` or ``metrics.jsonl`` (flushed every row).

    Parameters
    ----------
    out_dir : str or Path
        The run's folder.
    fmt : {"csv", "jsonl"}
    """

    def __init__(self, out_dir, fmt="csv"):
        self.path = Path(out_dir) / metrics_name(fmt)
        self.fmt = fmt
        self._fh = None

    def rewrite(self, rows):
        """Start the file over with ``rows`` (a resumed run drops rows after its checkpoint).

        The new file replaces the old one atomically (a crash here leaves one of
        the two whole), then rows are appended to it.

        Parameters
        ----------
        rows : list of dict
        """
        self.close()
        head = ",".join(FIELDS) + "\n" if self.fmt == "csv" else ""
        atomic_write_text(self.path, head + "".join(self._line(row) for row in rows))
        self._fh = open(self.path, "a", newline="")

    def _line(self, row):
        """One row as a line of the file."""
        if self.fmt == "csv":
            return ",".join("" if row.get(k) is None else repr(row[k]) for k in FIELDS) + "\n"
        return json.dumps({k: row.get(k) for k in FIELDS}) + "\n"

    def append(self, row):
        """Write one row.

        Parameters
        ----------
        row : dict
            A metrics row (keys of ``FIELDS``).
        """
        self._fh.write(self._line(row))
        self._fh.flush()

    def close(self):
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


_INT_FIELDS = ("round", "up_bytes", "down_bytes", "total_up", "total_down", "changed")


def read_metrics(run_dir):
    """Rows of a run's metrics file (CSV or JSONL), numbers parsed; [] when absent.

    Parameters
    ----------
    run_dir : str or Path

    Returns
    -------
    list of dict

    Raises
    ------
    RunFileError
        The file is truncated or malformed (a row with missing or unreadable
        fields, rounds out of order); the message names the file and line.
    """
    run_dir = Path(run_dir)
    jsonl = run_dir / metrics_name("jsonl")
    path = jsonl if jsonl.exists() else run_dir / metrics_name("csv")
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        rows = _parse_jsonl(text) if path == jsonl else _parse_csv(text)
    except ValueError as exc:
        raise RunFileError(f"metrics file {path} is truncated or malformed ({exc}); it cannot be read") from None
    for i, row in enumerate(rows):
        if row["round"] != i + 1:
            raise RunFileError(f"metrics file {path}: row {i + 1} is round {row['round']}, expected {i + 1} "
                               f"(two runs wrote into it, or it was edited)")
    return rows


def _parse_jsonl(text):
    """Rows of a JSONL metrics file (ValueError names the bad line)."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"line {n} is not JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("round"), int):
            raise ValueError(f"line {n} is not a metrics row (an object with an integer 'round')")
        rows.append(rec)
    return rows


def _parse_csv(text):
    """Rows of a CSV metrics file (ValueError names the bad line)."""
    lines = text.splitlines()
    header = lines[0].split(",") if lines else []
    if "round" not in header:
        raise ValueError("line 1 is not a header naming the fields (round, lr, ...)")
    if not text.endswith("\n"):
        raise ValueError(f"line {len(lines)} is cut short")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        values = line.split(",")
        if len(values) != len(header):
            raise ValueError(f"line {n} has {len(values)} fields, the header {len(header)}")
        try:
            rows.append({k: None if v == "" else (int(v) if k in _INT_FIELDS else float(v))
                         for k, v in zip(header, values)})
        except ValueError:
            raise ValueError(f"line {n} holds a value that is not a number") from None
    return rows


def _fmt(x, spec):
    """Format a number, '-' for NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(results):
    """The final table: accuracy, MB up/down and compressions, one line per run.

    Parameters
    ----------
    results : list of RunResult

    Returns
    -------
    str
    """
    head = ["run", "rule", "status", "acc", "MB up", "MB down", "up x", "down x", "overall x"]
    lines = []
    for r in results:
        status = r.status if r.status == "ok" else f"{r.status}@{r.rounds_done + 1}"
        lines.append([r.label, r.rule, status, _fmt(r.final_acc, ".4f"), _fmt(r.up_bytes / 1e6, ".2f"),
                      _fmt(r.down_bytes / 1e6, ".2f"), _fmt(r.up_compression, ".1f"),
                      _fmt(r.down_compression, ".1f"), _fmt(r.compression, ".2f")])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines)
    return "\n".join(out)


def plot_experiment(results, out_dir):
    """Write ``compression.png`` (final accuracy against overall compression, one line per
    method) and ``curves.png`` (accuracy against rounds and against total MB).

    Parameters
    ----------
    results : list of RunResult
    out_dir : str or Path

    Returns
    -------
    tuple of Path
        The two PNG files.

    Raises
    ------
    MissingDependency
        matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependency("plots need matplotlib: pip install matplotlib (or set output.plot = false "
                                "/ pass --no-plot)") from exc

    out_dir = Path(out_dir)
    groups = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cmap = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    markers = "os^Dv<>p*h"
    for i, (group, runs) in enumerate(groups.items()):
        ok = sorted((r for r in runs if r.status == "ok"), key=lambda r: r.compression)
        bad = [r for r in runs if r.status != "ok"]
        line = ax.plot([r.compression for r in ok], [r.final_acc for r in ok], "-", marker=markers[i % 10],
                       color=cmap(i % cmap.N), label=group)[0]
        if bad:
            ax.plot([r.compression for r in bad], [0.0] * len(bad), "x", color=line.get_color(), ms=9,
                    label=f"{group} (diverged)")
    ax.set_xscale("log")
    ax.set_xlabel("overall compression (uncompressed bytes / bytes, upload + download)")
    ax.set_ylabel("final test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    comp = out_dir / COMPRESSION_PLOT
    fig.savefig(comp, dpi=120)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab20" if len(results) > 10 else "tab10")
    for i, r in enumerate(results):
        pts = [(h["round"], (h["total_up"] + h["total_down"]) / 1e6, h["test_acc"]) for h in r.history
               if h.get("test_acc") is not None]
        if not pts:
            continue
        rounds, mb, acc = zip(*pts)
        style = {"color": colors(i % colors.N), "lw": 1, "ls": "-" if i < 20 else "--"}
        a1.plot(rounds, acc, label=r.label, **style)
        a2.plot(mb, acc, label=r.label, **style)
    a1.set_xlabel("round")
    a2.set_xlabel("total MB (upload + download)")
    a2.set_xscale("log")
    for a in (a1, a2):
        a.set_ylabel("test accuracy")
        a.grid(True, alpha=0.3)
    a2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    curves = out_dir / CURVES_PLOT
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    return comp, curves


def write_experiment(exp, cfg, *, plot=True, log=None):
    """results.csv, results.json, table.txt and the plots in the experiment folder; print the table.

    Parameters
    ----------
    exp : ExperimentResult
    cfg : Config
    plot : bool, default True
    log : callable, optional
        Where messages go (default print).
    """
    from .config import dump_toml

    out = exp.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in exp.runs]
    atomic_write_text(out / RESULTS_JSON, json.dumps(rows, indent=1))
    if rows:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out / RESULTS_CSV, buf.getvalue())
    atomic_write_text(out / CONFIG_NAME, dump_toml(cfg))
    table = format_table(exp.runs)
    atomic_write_text(out / TABLE_NAME, table + "\n")
    print(table, file=sys.stdout, flush=True)
    if plot and exp.runs:
        comp, curves = plot_experiment(exp.runs, out)
        (log or print)(f"wrote {comp} and {curves}")
    (log or print)(f"results in {out}/ (results.csv, table.txt, one folder per run with metrics.{cfg.output.metrics})")

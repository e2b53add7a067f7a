"""Results on disk and on screen: per-round metrics (CSV/JSONL), the final table, PNG plots."""
import csv
import io
import json
import logging
import math
from pathlib import Path

from ._atomic import atomic_write_bytes, atomic_write_text
from .errors import MissingDependency, RunFileError
from .layout import (COMPRESSION_PLOT, CONFIG_NAME, CURVES_PLOT, PROVENANCE_NAME, RESULTS_CSV, RESULTS_JSON,
                     TABLE_NAME, metrics_name)

__all__ = ["MetricsWriter", "read_metrics", "format_table", "synthetic_note", "write_experiment",
           "plot_experiment"]

_log = logging.getLogger("fedsim")

FIELDS = ["round", "lr", "train_loss", "test_loss", "test_acc", "up_bytes", "down_bytes", "total_up",
          "total_down", "changed", "compression", "test_bpc"]  # test_bpc: text datasets only


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


def _synthetic_names(results):
    """Sorted names of the synthetic datasets the runs used."""
    return sorted({r.dataset for r in results if getattr(r, "synthetic", False)})


def synthetic_note(results):
    """A warning line naming the synthetic datasets of ``results``, or "" when every run used real data."""
    names = _synthetic_names(results)
    if not names:
        return ""
    return (f"SYNTHETIC DATA ({', '.join(names)}): generated stand-in data, not the real dataset; "
            f"these accuracies say nothing about the paper's setup")


def _final_bpc(r):
    """Bits per character at the last evaluation (text runs), else None."""
    evals = [h for h in r.history if h.get("test_bpc") is not None]
    return evals[-1]["test_bpc"] if evals and r.status == "ok" else None


def format_table(results, provenance=None):
    """The final table: accuracy, MB up/down and compressions, one line per run (text runs add
    test bits per character).

    When a run used synthetic data, a first line says so (see :func:`synthetic_note`).

    Parameters
    ----------
    results : list of RunResult
    provenance : dict, optional
        What ran (``ExperimentResult.provenance``): a first line names the device.

    Returns
    -------
    str
    """
    text = any(_final_bpc(r) is not None for r in results)
    head = ["run", "rule", "status", "acc"] + (["bpc"] if text else []) + \
        ["MB up", "MB down", "up x", "down x", "overall x"]
    lines = []
    for r in results:
        status = r.status if r.status == "ok" else f"{r.status}@{r.rounds_done + 1}"
        bpc = [_fmt(_final_bpc(r), ".3f")] if text else []
        lines.append([r.label, r.rule, status, _fmt(r.final_acc, ".4f")] + bpc +
                     [_fmt(r.up_bytes / 1e6, ".2f"), _fmt(r.down_bytes / 1e6, ".2f"), _fmt(r.up_compression, ".1f"),
                      _fmt(r.down_compression, ".1f"), _fmt(r.compression, ".2f")])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = [] if provenance is None else [f"device: {provenance['device_name']} ({provenance['device']})"]
    out.append("  ".join(str(x).ljust(w) for x, w in zip(head, widths)))
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines)
    note = synthetic_note(results)
    return "\n".join([note] + out if note else out)


def _sweep_point(result):
    """The knob values that tell a run from its method's other runs: ``k=50`` from ``fetchsgd[k=50]``."""
    prefix = f"{result.group}["
    if result.label.startswith(prefix) and result.label.endswith("]"):
        return result.label[len(prefix):-1]
    return "" if result.label == result.group else result.label


_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
_FONT = 8  # points: the smallest text on either plot


def _styles(results, cmap_name="tab10"):
    """Per run: one colour per method, one line style per compression level within it."""
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r.group for r in results))
    cmap = plt.get_cmap(cmap_name if len(groups) <= 10 else "tab20")
    seen = {}
    out = []
    for r in results:
        level = seen.get(r.group, 0)
        seen[r.group] = level + 1
        out.append({"color": cmap(groups.index(r.group) % cmap.N), "ls": _LINESTYLES[level % len(_LINESTYLES)]})
    return out


# Offsets (points) tried in turn for a point's label: right, left, above, below, then diagonals.
_LABEL_OFFSETS = ((6, -3), (-6, -3), (0, 7), (0, -13), (6, 6), (6, -12), (-6, 6), (-6, -12), (8, 16), (8, -22))


def _place_labels(fig, ax, labels, polylines):
    """Annotate points, each label at the first offset that covers no marker, line or placed label."""
    import numpy as np

    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    pad = 4.0  # pixels around a marker
    taken = [(px - pad, py - pad, px + pad, py + pad) for px, py in (to_px((x, y)) for x, y, _, _ in labels)]
    for xy in polylines:  # lines are obstacles too: small boxes every few pixels along each segment
        px = to_px(np.asarray(xy, dtype=float))
        for a, b in zip(px[:-1], px[1:]):
            for t in np.linspace(0, 1, max(2, int(np.hypot(*(b - a)) // 3))):
                x, y = a + t * (b - a)
                taken.append((x - 1, y - 1, x + 1, y + 1))

    def overlap(a, b):
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    for x, y, text, color in sorted(labels, key=lambda t: (t[0], t[1])):
        best = None
        for dx, dy in _LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=_FONT,
                              color=color, ha="left" if dx >= 0 else "right",
                              bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
            box = ann.get_window_extent(renderer)
            box = (box.x0, box.y0, box.x1, box.y1)
            cost = sum(overlap(box, t) for t in taken)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        taken.append(best[2])


def _save_png(fig, path, **kw):
    """Render a figure into memory, then write the PNG atomically (a reader never sees half of one)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", **kw)
    atomic_write_bytes(path, buf.getvalue())


def plot_experiment(results, out_dir):
    """Write ``compression.png`` and ``curves.png`` in ``out_dir``.

    ``compression.png``: final accuracy against overall compression, one line per
    method, each point labelled with its sweep knobs (``k=50``, ``local_epochs=5``).
    ``curves.png``: accuracy against rounds and against total MB; one colour per
    method, one line style per compression level, the legend beside the panels.

    Parameters
    ----------
    results : list of RunResult
    out_dir : str or Path

    Returns
    -------
    tuple of Path
        ``(compression.png, curves.png)``.

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
    with plt.rc_context({"font.size": 9, "legend.fontsize": _FONT, "xtick.labelsize": _FONT,
                         "ytick.labelsize": _FONT}):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        cmap = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
        markers = "os^Dv<>p*h"
        labels = []  # (x, y, text, colour) of every point's knob label
        polylines = []
        for i, (group, runs) in enumerate(groups.items()):
            ok = sorted((r for r in runs if r.status == "ok"), key=lambda r: r.compression)
            bad = [r for r in runs if r.status != "ok"]
            line = ax.plot([r.compression for r in ok], [r.final_acc for r in ok], "-", marker=markers[i % 10],
                           color=cmap(i % cmap.N), label=group)[0]
            polylines.append([(r.compression, r.final_acc) for r in ok])
            if bad:
                ax.plot([r.compression for r in bad], [0.0] * len(bad), "x", color=line.get_color(), ms=9,
                        label=f"{group} (diverged)")
            labels.extend((r.compression, r.final_acc if r.status == "ok" else 0.0, _sweep_point(r),
                           line.get_color()) for r in ok + bad if _sweep_point(r))
        note = synthetic_note(results)
        if note:
            ax.set_title("SYNTHETIC DATA: " + ", ".join(_synthetic_names(results)), color="red", fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("overall compression (uncompressed bytes / bytes, upload + download)")
        ax.set_ylabel("final test accuracy")
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.15, y=0.08)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        _place_labels(fig, ax, labels, polylines)
        comp = out_dir / COMPRESSION_PLOT
        meta = {"Description": note} if note else None  # machine-readable: the PNG's text chunk
        _save_png(fig, comp, dpi=120, metadata=meta)
        plt.close(fig)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for r, style in zip(results, _styles(results)):
            pts = [(h["round"], (h["total_up"] + h["total_down"]) / 1e6, h["test_acc"]) for h in r.history
                   if h.get("test_acc") is not None]
            if not pts:
                continue
            rounds, mb, acc = zip(*pts)
            a1.plot(rounds, acc, lw=1.4, label=r.label, **style)
            a2.plot(mb, acc, lw=1.4, **style)
        a1.set_xlabel("round")
        a2.set_xlabel("total MB (upload + download)")
        a2.set_xscale("log")
        for a in (a1, a2):
            a.set_ylabel("test accuracy")
            a.grid(True, alpha=0.3)
        if note:
            fig.suptitle(note, color="red", fontsize=9)
        fig.tight_layout()
        handles, labels = a1.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                       handlelength=3, title="run (colour: method; line: level)", title_fontsize=_FONT)
        curves = out_dir / CURVES_PLOT
        _save_png(fig, curves, dpi=110, metadata=meta)
        plt.close(fig)
    return comp, curves


def write_experiment(exp, cfg, *, plot=True, log=None):
    """Write results.csv, results.json, provenance.json, config.toml, table.txt and the plots.

    Parameters
    ----------
    exp : ExperimentResult
    cfg : Config
    plot : bool
        Draw ``compression.png`` and ``curves.png``.
    log : callable, optional
        Where messages go (default: the ``fedsim`` logger at INFO).

    Returns
    -------
    str
        The table (also in ``table.txt``); printing it is the caller's choice.
    """
    from .config import dump_toml

    say = log or _log.info
    out = exp.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in exp.runs]
    atomic_write_text(out / RESULTS_JSON, json.dumps(rows, indent=1))
    if exp.provenance is not None:
        atomic_write_text(out / PROVENANCE_NAME, json.dumps(exp.provenance, indent=1))
    if rows:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out / RESULTS_CSV, buf.getvalue())
    atomic_write_text(out / CONFIG_NAME, dump_toml(cfg))
    table = format_table(exp.runs, exp.provenance)
    atomic_write_text(out / TABLE_NAME, table + "\n")
    if plot and exp.runs:
        comp, curves = plot_experiment(exp.runs, out)
        say(f"wrote {comp} and {curves}")
    say(f"results in {out}/ (results.csv, table.txt, provenance.json, one folder per run with "
        f"metrics.{cfg.output.metrics}, summary.json and provenance.json)")
    return table

"""Results on disk and on screen: per-round metrics (CSV/JSONL), the final table, PNG plots."""
import csv
import json
import math
import sys
from pathlib import Path

__all__ = ["MetricsWriter", "read_metrics", "format_table", "write_experiment", "plot_experiment"]

FIELDS = ["round", "lr", "train_loss", "test_loss", "test_acc", "up_bytes", "down_bytes", "total_up",
          "total_down", "changed", "compression", "test_bpc"]  # test_bpc: text datasets only


class MetricsWriter:
    """Per-round metrics of one run in ``metrics.csv`` or ``metrics.jsonl`` (flushed every row)."""

    def __init__(self, out_dir, fmt="csv"):
        self.path = Path(out_dir) / f"metrics.{fmt}"
        self.fmt = fmt
        self._fh = None

    def rewrite(self, rows):
        """Start the file over with ``rows`` (a resumed run drops rows after its checkpoint)."""
        self.close()
        self._fh = open(self.path, "w", newline="")
        if self.fmt == "csv":
            self._fh.write(",".join(FIELDS) + "\n")
        for row in rows:
            self.append(row)

    def append(self, row):
        """Write one row."""
        if self.fmt == "csv":
            self._fh.write(",".join("" if row.get(k) is None else repr(row[k]) for k in FIELDS) + "\n")
        else:
            self._fh.write(json.dumps({k: row.get(k) for k in FIELDS}) + "\n")
        self._fh.flush()

    def close(self):
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(run_dir):
    """Rows of a run's metrics file (CSV or JSONL), numbers parsed; [] when absent."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").exists():
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            rows.append({k: (None if v == "" else (int(v) if k in ("round", "up_bytes", "down_bytes", "total_up",
                                                                    "total_down", "changed") else float(v)))
                         for k, v in rec.items()})
    return rows


def _fmt(x, spec):
    """Format a number, '-' for NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _final_bpc(r):
    """Bits per character at the last evaluation (text runs), else None."""
    evals = [h for h in r.history if h.get("test_bpc") is not None]
    return evals[-1]["test_bpc"] if evals and r.status == "ok" else None


def format_table(results):
    """The final table: accuracy, MB up/down and compressions, one line per run (text runs add
    test bits per character)."""
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
    out = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines)
    return "\n".join(out)


def plot_experiment(results, out_dir):
    """Write ``compression.png`` (final accuracy against overall compression, one line per
    method) and ``curves.png`` (accuracy against rounds and against total MB); returns paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    comp = out_dir / "compression.png"
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
    curves = out_dir / "curves.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    return comp, curves


def write_experiment(exp, cfg, *, plot=True, log=None):
    """results.csv, results.json, table.txt and the plots in the experiment folder; print the table."""
    from .config import dump_toml

    out = exp.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in exp.runs]
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    if rows:
        with open(out / "results.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    (out / "config.toml").write_text(dump_toml(cfg))
    table = format_table(exp.runs)
    (out / "table.txt").write_text(table + "\n")
    print(table, file=sys.stdout, flush=True)
    if plot and exp.runs:
        comp, curves = plot_experiment(exp.runs, out)
        (log or print)(f"wrote {comp} and {curves}")
    (log or print)(f"results in {out}/ (results.csv, table.txt, one folder per run with metrics.{cfg.output.metrics})")

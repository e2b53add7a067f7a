#!/usr/bin/env python
"""The regime map: where does FetchSGD beat local top-k and FedAvg at matched overall compression?

For every point of a grid (task, clients per round W, FetchSGD's k) the study runs FetchSGD at
``(k, cols = cols_per_k * k)``; the mean of its overall compression over the seeds is the
point's target. Local top-k (global momentum) and FedAvg (server momentum) are then matched to
that target: local top-k's ``k`` and FedAvg's number of rounds (local epochs = base rounds /
rounds) are found by secant steps in log space on real seed-0 runs (the byte accounting depends
on the update's sparsity pattern, so it is measured, not assumed), and the other seeds reuse
the knob. Every run's compression is checked against the target; misses are reported.
Learning rates come from one procedure applied to every method alike (see the config).

Usage::

    python bench/regime_map.py [--config bench/regime_map.toml] [--grid full]
                               [--smoke] [--seeds N] [--jobs J] [--device cpu|cuda] [--out DIR]
                               [--resume] [--replot DIR]

Writes to ``--out`` (default ``runs/regime_map`` or ``runs/regime_map_smoke``): ``runs.csv``
(every run, calibration and pilot included), ``points.csv`` (one row per point and method),
``heatmap.png`` (FetchSGD's accuracy minus each rival's and the best rival's, over
W k / d and participation), ``bytes.png`` (MB up and down per method per point) and
``summary.md``.
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_CONFIG = ROOT / "bench" / "regime_map.toml"
RIVALS = ("local_topk", "fedavg")
RUN_FIELDS = ["point", "task", "phase", "method", "knob", "seed", "lr", "status", "final_acc",
              "compression", "up_bytes", "down_bytes", "ref_up_bytes", "ref_down_bytes", "rounds",
              "d", "W", "num_clients", "seconds"]
POINT_FIELDS = ["point", "task", "d", "W", "num_clients", "participation", "k_fetchsgd", "rows", "cols",
                "wk_over_d", "target", "method", "knob", "wk_over_d_method", "lr", "acc_mean",
                "acc_std", "accs", "diverged", "compression_mean", "ratio_min", "ratio_max",
                "matched", "up_MB", "down_MB", "up_compression", "down_compression",
                "acc_minus_fetchsgd", "seconds"]


class StudyError(ValueError):
    """A bad study config or argument; the message names the problem."""


# ----------------------------------------------------------------------------- config
def load_study(path, *, grid="full", smoke=False, seeds=None, jobs=None, device="cpu"):
    """The study settings, tasks and points of one grid, validated."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study config {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    for key in ("study", "base", "tasks", "grids"):
        if key not in raw:
            raise StudyError(f"{path}: missing section [{key}]")
    study = {k: v for k, v in raw["study"].items() if not isinstance(v, dict)}
    study["fetchsgd"] = dict(raw["study"].get("fetchsgd", {"rows": 3, "cols_per_k": 10}))
    if smoke:
        grid = "smoke"
        study.update(raw["study"].get("smoke", {}))
    if seeds is not None:
        study["seeds"] = seeds
    if jobs is not None:
        study["jobs"] = jobs
    grids = grid.split(",")  # "full,paper_shape": the union of the grids' points
    for g in grids:
        if g not in raw["grids"]:
            raise StudyError(f"{path}: no grid {g!r}; grids: {sorted(raw['grids'])}")
    if int(study["seeds"]) < 1 or int(study["jobs"]) < 1:
        raise StudyError("seeds and jobs must be positive")
    tasks = raw["tasks"]
    points = []
    for i, p in enumerate(p for g in grids for p in raw["grids"][g]):
        if p.get("task") not in tasks:
            raise StudyError(f"grid {grid!r} point {i}: unknown task {p.get('task')!r}; tasks: {sorted(tasks)}")
        for key in ("W", "k"):
            if not isinstance(p.get(key), int) or p[key] < 1:
                raise StudyError(f"grid {grid!r} point {i}: {key} must be a positive integer, got {p.get(key)!r}")
        task = dict(tasks[p["task"]], name=p["task"])
        task["options"] = dict(task.get("options", {}), **p.get("options", {}))
        pid = f"{p['task']}_W{p['W']}_k{p['k']}" + "".join(f"_{n[0]}{p[n]}" for n in ("rows", "cols_per_k", "num_clients")
                                                           if n in p)
        points.append(dict(p, id=pid, task=task))
    base = list(raw["base"]["overrides"])
    if device != "cpu":
        base += [f"train.device={device}", "rule.sketch_backend=cupy"]
    return {"study": study, "points": points, "base": base, "grid": grid, "tasks": tasks}


# ----------------------------------------------------------------------------- runs
_DATA = {}


def _malloc_keep():
    """Keep freed large blocks in the heap: each client's d-vector gradient then reuses memory
    instead of page-faulting a fresh mapping (about half the cost of a client at d = 1M here)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def dataset_for(task, seed):
    """The task's dataset for a seed (one kept in memory per process: the 1M task is large)."""
    from fedsim.data import load_dataset

    key = (task["dataset"], json.dumps(task["options"], sort_keys=True), task.get("root"), seed)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_dataset(task["dataset"], task.get("root"), seed=seed, **task["options"])
    return _DATA[key]


def make_spec(setup, point, method, knob, seed, lr):
    """The fedsim RunSpec of one run (public API: load_config + overrides + a methods entry)."""
    import fedsim

    task = point["task"]
    ov = list(setup["base"]) + list(task["overrides"]) + list(point.get("overrides", [])) + [
        f"data.num_clients={_clients(point)}", f"train.clients_per_round={point['W']}",
        f"train.seed={seed}", f"train.lr={lr}"]
    if method == "fetchsgd":
        rows, cpk = _shape(setup, point)
        ov += [f"rule.k={point['k']}", f"rule.cols={cpk * point['k']}", f"rule.rows={rows}"]
    elif method == "local_topk":
        ov += [f"rule.k={knob}"]
    cfg = fedsim.load_config(None, ov, single_rule=method)
    if method == "fedavg":
        # Fewer rounds with more local epochs; the reference stays the base schedule's length.
        epochs = max(1, round(cfg.train.rounds / knob))
        cfg.methods = [{"label": "fedavg", "rule": "fedavg", "rounds": int(knob), "local_epochs": epochs}]
    return cfg.runs()[0]


def run_one(setup, point, method, knob, seed, lr, phase):
    """One run; returns its row (a diverged run's compression is extrapolated to all rounds)."""
    import fedsim

    spec = make_spec(setup, point, method, knob, seed, lr)
    ds = dataset_for(point["task"], seed)
    start = time.perf_counter()
    sim = fedsim.Simulation(spec, dataset=ds)
    try:
        res, status = sim.run(), "ok"
    except fedsim.NonFiniteError as exc:
        res, status = sim.result("diverged", str(exc)), "diverged"
    total = res.up_bytes + res.down_bytes
    scale = spec.train.rounds / max(res.rounds_done, 1)
    comp = (res.ref_up_bytes + res.ref_down_bytes) / (total * scale) if total else float("nan")
    return {"point": point["id"], "task": point["task"]["name"], "phase": phase, "method": method,
            "knob": knob, "seed": seed, "lr": lr, "status": status,
            "final_acc": res.final_acc if status == "ok" else float("nan"), "compression": comp,
            "up_bytes": res.up_bytes, "down_bytes": res.down_bytes, "ref_up_bytes": res.ref_up_bytes,
            "ref_down_bytes": res.ref_down_bytes, "rounds": spec.train.rounds, "d": res.d,
            "W": point["W"], "num_clients": _clients(point),
            "seconds": round(time.perf_counter() - start, 2)}


def calibrate(run_at, knob0, target, *, aim, tries, lo, hi, slope0=-1.0):
    """Secant / regula falsi on log(compression) vs log(knob) until a seed-0 run is within `aim`.

    Returns (best knob, {knob: row}); `run_at(knob)` runs seed 0. Compression falls as the
    knob grows (k, rounds); once two knobs bracket the target the next one interpolates
    between them (bisecting in log space when that lands on a knob already tried).
    """
    tried, err = {}, {}
    knob = int(min(max(knob0, lo), hi))
    for _ in range(tries):
        tried[knob] = run_at(knob)
        c = tried[knob]["compression"]
        if not (c > 0 and math.isfinite(c)):
            break
        err[knob] = math.log(c / target)
        best = min(err, key=lambda k: abs(err[k]))
        if abs(math.exp(err[best]) - 1) <= aim:
            break
        opposite = [k for k in err if err[k] * err[best] < 0]
        if opposite:  # bracketed: interpolate between the closest knob on each side
            other = min(opposite, key=lambda k: abs(err[k]))
        else:
            others = [k for k in err if k != best]
            other = min(others, key=lambda k: abs(err[k])) if others else None
        slope = slope0
        if other is not None and err[other] != err[best]:
            s = (err[best] - err[other]) / (math.log(best) - math.log(other))
            # A plateau (flat slope) far from the target: step boldly (a factor e per 0.3 of log-error).
            slope = s if s < -0.3 else (slope0 if opposite else -0.3)
        nxt = int(min(max(round(math.exp(math.log(best) - err[best] / slope)), lo), hi))
        # Compression vs k has plateaus (a dense download) and cliffs, where interpolation
        # crawls: once bracketed, every other step bisects in log space.
        if opposite and (len(tried) % 2 == 0 or not min(best, other) < nxt < max(best, other)):
            nxt = int(round(math.sqrt(best * other)))
        if nxt in tried:
            if not opposite or abs(best - other) <= 1:
                break
            nxt = int(round(math.sqrt(best * other)))
            if nxt in tried:
                break
        knob = nxt
    scores = {k: abs(e) for k, e in err.items()}
    return (min(scores, key=scores.get) if scores else knob), tried


def choose_lrs(setup, point):
    """Pilot: each method's best lr (seed 0) among base_lr * lr_factors at this point."""
    study = setup["study"]
    base_lr = _base_lr(setup, point)
    rows, best = [], {}
    fetch = {}
    for f in study["lr_factors"]:
        fetch[f] = run_one(setup, point, "fetchsgd", point["k"], 0, base_lr * f, "pilot")
        rows.append(fetch[f])
    ref = fetch.get(1.0, next(iter(fetch.values())))
    rounds = ref["rounds"]
    fedavg_rounds = _fedavg_rounds(rounds, ref["compression"])
    knobs = {"fetchsgd": point["k"], "local_topk": point["k"], "fedavg": fedavg_rounds}
    for method in study["methods"]:
        runs = [fetch[f] for f in study["lr_factors"]] if method == "fetchsgd" else []
        if method != "fetchsgd":
            for f in study["lr_factors"]:
                runs.append(run_one(setup, point, method, knobs[method], 0, base_lr * f, "pilot"))
            rows.extend(runs)
        scores = [(-1.0 if r["status"] != "ok" else r["final_acc"], -abs(math.log(r["lr"] / base_lr)), r["lr"])
                  for r in runs]
        best[method] = max(scores)[2]
    return best, rows


def _clients(point):
    """Clients of a point: its own ``num_clients`` (participation = W / clients), else the task's."""
    return int(point.get("num_clients", point["task"]["num_clients"]))


def _shape(setup, point):
    """FetchSGD's (rows, cols_per_k) at a point: the point's own, else the study's."""
    fs = setup["study"]["fetchsgd"]
    return int(point.get("rows", fs["rows"])), int(point.get("cols_per_k", fs["cols_per_k"]))


def _base_lr(setup, point):
    """train.lr of the task (after its overrides)."""
    for item in reversed(list(setup["base"]) + list(point["task"]["overrides"]) + list(point.get("overrides", []))):
        if item.startswith("train.lr="):
            return float(item.split("=", 1)[1])
    return 0.1


def _fedavg_rounds(rounds, target):
    """Rounds whose analytic FedAvg compression (dense up and down) is closest to `target`."""
    # FedAvg: W d floats up each round, W d down each round but the first: (2R - 1) / (2R' - 1).
    return int(min(max(round(((2 * rounds - 1) / target + 1) / 2), 1), rounds))


def run_point(setup, point, lrs):
    """Every run of one point; returns the rows."""
    study = setup["study"]
    seeds = range(int(study["seeds"]))
    rows = []
    fetch = [run_one(setup, point, "fetchsgd", point["k"], s, lrs["fetchsgd"], "final") for s in seeds]
    rows += fetch
    comps = [r["compression"] for r in fetch if math.isfinite(r["compression"])]
    target = sum(comps) / len(comps)
    d = fetch[0]["d"]
    for method in study["methods"]:
        if method == "fetchsgd":
            continue
        lr = lrs[method]
        run_at = lambda knob, m=method, lr=lr: run_one(setup, point, m, knob, 0, lr, "calibration")  # noqa: E731
        if method == "local_topk":
            knob, tried = calibrate(run_at, point["k"], target, aim=study["aim"],
                                    tries=int(study["calibration_tries"]), lo=1, hi=d)
        else:
            rounds = fetch[0]["rounds"]
            knob, tried = calibrate(run_at, _fedavg_rounds(rounds, target), target, aim=study["aim"],
                                    tries=int(study["calibration_tries"]), lo=1, hi=rounds)
        for k, r in tried.items():
            if k == knob:
                r["phase"] = "final"
            rows.append(r)
        rows += [run_one(setup, point, method, knob, s, lr, "final") for s in seeds if s != 0]
    for r in rows:
        r["target"] = target
    return rows


# ----------------------------------------------------------------------------- summary
def summarize(setup, rows):
    """One row per point and method (final runs only)."""
    tol = float(setup["study"]["tolerance"])
    out = []
    for point in setup["points"]:
        prow = [r for r in rows if r["point"] == point["id"] and r["phase"] == "final"]
        if not prow:
            continue
        target = prow[0]["target"]
        d, n = prow[0]["d"], _clients(point)
        per = {}
        for method in setup["study"]["methods"]:
            mr = [r for r in prow if r["method"] == method]
            if not mr:
                continue
            chance = 1.0 / max(2, _num_classes(point))
            accs = [r["final_acc"] if r["status"] == "ok" else chance for r in mr]
            mean = sum(accs) / len(accs)
            std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
            ratios = [r["compression"] / target for r in mr]
            up = sum(r["up_bytes"] for r in mr) / len(mr)
            down = sum(r["down_bytes"] for r in mr) / len(mr)
            k_m = mr[0]["knob"] if method != "fedavg" else None
            per[method] = {
                "point": point["id"], "task": point["task"]["name"], "d": d, "W": point["W"],
                "num_clients": n, "participation": point["W"] / n, "k_fetchsgd": point["k"],
                "rows": _shape(setup, point)[0], "cols": _shape(setup, point)[1] * point["k"], "wk_over_d": point["W"] * point["k"] / d,
                "target": target, "method": method, "knob": mr[0]["knob"],
                "wk_over_d_method": point["W"] * k_m / d if k_m else float("nan"), "lr": mr[0]["lr"],
                "acc_mean": mean, "acc_std": std, "accs": " ".join(f"{a:.4f}" for a in accs),
                "diverged": sum(r["status"] != "ok" for r in mr),
                "compression_mean": sum(r["compression"] for r in mr) / len(mr),
                "ratio_min": min(ratios), "ratio_max": max(ratios),
                "matched": all(abs(x - 1) <= tol for x in ratios),
                "up_MB": up / 1e6, "down_MB": down / 1e6,
                "up_compression": mr[0]["ref_up_bytes"] / up if up else float("inf"),
                "down_compression": mr[0]["ref_down_bytes"] / down if down else float("inf"),
                "seconds": sum(r["seconds"] for r in mr)}
        for m, row in per.items():
            row["acc_minus_fetchsgd"] = row["acc_mean"] - per["fetchsgd"]["acc_mean"] if "fetchsgd" in per else float("nan")
            out.append(row)
    return out


def _approx_d(point):
    """The model dimension for ordering work (exact for the linear model, a guess otherwise)."""
    o = point["task"]["options"]
    return o["features"] * o.get("classes", 10) if "features" in o else 30_000


def _num_classes(point):
    """Class count of a point's task (for the chance level of a diverged run)."""
    return int(point["task"]["options"].get("classes", 10))


def _write_csv(path, rows, fields):
    """Atomic CSV write."""
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)


def point_diffs(summary):
    """{point: {"local_topk": diff, "fedavg": diff, "best": diff, ...}}: FetchSGD minus rival."""
    out = {}
    for r in summary:
        if r["method"] == "fetchsgd":
            continue
        # A point with another sketch shape at the same place is drawn a little to the right.
        shift = 1.0 if int(r.get("rows", 3)) == 3 else 2.0
        entry = out.setdefault(r["point"], {"x": r["wk_over_d"] * shift, "y": r["participation"],
                                            "task": r["task"] + ("" if shift == 1.0 else f", {int(r['rows'])} row(s)"),
                                            "unmatched": []})
        entry[r["method"]] = -r["acc_minus_fetchsgd"]
        if not r["matched"]:
            entry["unmatched"].append(r["method"])
    for entry in out.values():
        rivals = [entry[m] for m in RIVALS if m in entry]
        entry["best"] = min(rivals) if rivals else float("nan")
    return out


def plot(summary, out_dir, title):
    """heatmap.png and bytes.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    diffs = point_diffs(summary)
    if not diffs:
        return
    panels = [("local_topk", "FetchSGD − local top-k"), ("fedavg", "FetchSGD − FedAvg"),
              ("best", "FetchSGD − best rival")]
    vmax = max(0.02, max(abs(e.get(m, 0.0)) for e in diffs.values() for m, _ in panels
                         if math.isfinite(e.get(m, 0.0))))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    markers = {"digits": "s", "highdim": "o", "highdim_1m": "D", "mnist": "^", "highdim, 1 row(s)": "h"}
    for ax, (m, name) in zip(axes, panels):
        for pid, e in diffs.items():
            if m not in e:
                continue
            v = e[m]
            sc = ax.scatter([e["x"]], [e["y"]], c=[v], cmap="RdBu", vmin=-vmax, vmax=vmax, s=420,
                            marker=markers.get(e["task"], "P"),
                            edgecolors="red" if (m in e["unmatched"] or (m == "best" and e["unmatched"])) else "k",
                            linewidths=2.5 if e["unmatched"] else 0.8)
            ax.annotate(f"{v:+.2f}", (e["x"], e["y"]), ha="center", va="center", fontsize=6.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(0.25)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("W·k/d (FetchSGD's k)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("participation W / clients")
    fig.colorbar(sc, ax=axes, label="accuracy difference (blue: FetchSGD better)")
    handles = [plt.Line2D([], [], marker=mk, ls="", color="gray", label=t) for t, mk in markers.items()
               if any(e["task"] == t for e in diffs.values())]
    handles.append(plt.Line2D([], [], marker="o", ls="", mfc="none", mec="red", mew=2.5,
                              label="compression not matched within tolerance"))
    axes[2].legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.6)
    fig.suptitle(title + "; a point with another sketch shape is drawn at 2x its W·k/d")
    fig.savefig(Path(out_dir) / "heatmap.png", dpi=110)
    plt.close(fig)

    points = list(dict.fromkeys(r["point"] for r in summary))
    methods = list(dict.fromkeys(r["method"] for r in summary))
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(points)), 5))
    width = 0.8 / (2 * len(methods))
    colours = {"fetchsgd": "tab:blue", "local_topk": "tab:orange", "fedavg": "tab:green"}
    for j, m in enumerate(methods):
        for i, p in enumerate(points):
            r = next((r for r in summary if r["point"] == p and r["method"] == m), None)
            if r is None:
                continue
            x = i - 0.4 + (2 * j + 0.5) * width
            ax.bar(x, r["up_MB"], width, color=colours.get(m, "gray"), hatch="//", edgecolor="k",
                   label=f"{m} up" if i == 0 else None)
            ax.bar(x + width, r["down_MB"], width, color=colours.get(m, "gray"), alpha=0.45,
                   edgecolor="k", label=f"{m} down" if i == 0 else None)
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels(points, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("MB per run, all clients (up: hatched, down: light)")
    ax.set_title("Upload / download per method at matched overall compression")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "bytes.png", dpi=110)
    plt.close(fig)


def summary_markdown(setup, summary, skipped, wall):
    """A markdown table of the points (what the study write-up quotes)."""
    lines = [f"# Regime map ({setup['grid']} grid, {setup['study']['seeds']} seed(s), wall {wall:.0f} s)", ""]
    if skipped:
        lines += [f"Skipped: {', '.join(skipped)}", ""]
    lines += ["| point | d | W/N | W·k/d | target × | method | knob | acc (mean ± std) | × (min–max ratio) | "
              "MB up | MB down | up × | down × | matched |", "|" + "---|" * 14]
    for r in summary:
        lines.append(
            f"| {r['point']} | {r['d']:,} | {r['participation']:.3f} | {r['wk_over_d']:.3f} | {r['target']:.2f} | "
            f"{r['method']} | {r['knob']} | {r['acc_mean']:.3f} ± {r['acc_std']:.3f} | "
            f"{r['compression_mean']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {r['up_MB']:.1f} | "
            f"{r['down_MB']:.1f} | {r['up_compression']:.1f} | {r['down_compression']:.2f} | "
            f"{'yes' if r['matched'] else 'NO'} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- driver
def _pilot_job(setup, point):
    """Worker: the lr pilot of one task."""
    _malloc_keep()
    return point["task"]["name"], choose_lrs(setup, point)


def _point_job(setup, point, lrs):
    """Worker: one point."""
    _malloc_keep()
    return point["id"], run_point(setup, point, lrs)


def _available(point):
    """None if the task's data loads, else the reason (optional tasks only are skipped)."""
    if not point["task"].get("optional"):
        return None
    try:
        dataset_for(point["task"], 0)
    except (FileNotFoundError, ValueError) as exc:
        return f"{point['id']} ({exc.__class__.__name__}: {str(exc)[:80]})"
    finally:
        _DATA.clear()
    return None


_NOT_IN_KEY = ("jobs", "calibration_tries", "aim")


def _cache_key(setup, obj):
    """What a cached pilot or point depends on (study settings, shared overrides, the point)."""
    # Settings that change how a result is found, not what it is, are left out.
    study = {k: v for k, v in setup["study"].items() if k not in _NOT_IN_KEY}
    blob = {"study": study, "base": setup["base"], "obj": obj}
    return json.dumps(blob, sort_keys=True, default=str)


def _cached(out_dir, name, key):
    """A cached result of a finished pilot or point (None if absent or for other settings)."""
    path = Path(out_dir) / "cache" / f"{name}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["value"] if saved.get("key") == key else None


def _store(out_dir, name, key, value):
    """Atomically cache a finished pilot or point."""
    path = Path(out_dir) / "cache" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "value": value}))
    os.replace(tmp, path)


def run_study(setup, out_dir, log=print, resume=False, only=None):
    """Run the grid; write runs.csv, points.csv, summary.md and the plots; returns the summary rows.

    With `resume`, pilots and points finished by an earlier call with the same settings (cached
    under ``out_dir/cache``) are not run again. `only` (point ids) runs just those points (the
    grid's pilots still run, or come from the cache).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = setup["study"]
    skipped, points = [], []
    for p in setup["points"]:
        why = _available(p)
        (skipped.append(why) if why else points.append(p))
    pilots = {}
    for p in points:
        t = p["task"]
        if p.get("pilot") and t["name"] not in pilots:
            pilots[t["name"]] = p
    if only:
        unknown = sorted(set(only) - {p["id"] for p in points})
        if unknown:
            raise StudyError(f"--points names unknown points {unknown}")
        points = [p for p in points if p["id"] in only]
    setup = dict(setup, points=points)
    rows, lrs = [], {}
    jobs = int(study["jobs"])
    # spawn: a worker must not inherit a parent's CUDA context (--device cuda).
    pool = (ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) if jobs > 1
            else _Inline())
    running = {}  # future -> ("pilot", task name, cache key) or ("point", point id, cache key)
    try:
        for name, p in pilots.items():
            key = _cache_key(setup, p)
            hit = _cached(out_dir, f"pilot_{name}", key) if resume else None
            if hit is not None:
                lrs[name], prow = hit
                rows += prow
                log(f"pilot {name}: cached, lrs {lrs[name]}")
            else:
                running[pool.submit(_pilot_job, setup, p)] = ("pilot", name, key)
        # Longest first (cost ~ W d), so the workers finish together; a point waits for its pilot.
        waiting = sorted(points, key=lambda q: -q["W"] * _approx_d(q))
        while True:
            for p in list(waiting):
                chosen = _lrs_for(setup, p, pilots, lrs)
                if chosen is None:
                    continue
                waiting.remove(p)
                key = _cache_key(setup, [p, chosen])
                hit = _cached(out_dir, f"point_{p['id']}", key) if resume else None
                if hit is not None:
                    rows += hit
                    log(f"point {p['id']}: cached")
                else:
                    running[pool.submit(_point_job, setup, p, chosen)] = ("point", p["id"], key)
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                kind, name, key = running.pop(fut)
                if kind == "pilot":
                    best, prow = fut.result()[1]
                    lrs[name] = best
                    rows += prow
                    _store(out_dir, f"pilot_{name}", key, [best, prow])
                    log(f"pilot {name}: lrs {best}")
                else:
                    prow = fut.result()[1]
                    rows += prow
                    _store(out_dir, f"point_{name}", key, prow)
                    _write_csv(out_dir / "runs.csv", rows, RUN_FIELDS + ["target"])
                    log(f"point {name}: {len(prow)} runs, {sum(r['seconds'] for r in prow):.0f} s")
    finally:
        pool.shutdown()
    _write_csv(out_dir / "runs.csv", rows, RUN_FIELDS + ["target"])
    summary = summarize(setup, rows)
    _write_csv(out_dir / "points.csv", summary, POINT_FIELDS)
    wall = time.perf_counter() - start
    (out_dir / "summary.md").write_text(summary_markdown(setup, summary, skipped, wall))
    (out_dir / "lrs.json").write_text(json.dumps(lrs, indent=1))
    plot(summary, out_dir, f"Regime map ({setup['grid']}, {study['seeds']} seed(s))")
    log(f"wall {wall:.0f} s; results in {out_dir}")
    return summary


class _Inline:
    """A one-process stand-in for the pool: runs each job when it is submitted."""

    def submit(self, fn, *args):
        fut = Future()
        fut.set_result(fn(*args))
        return fut

    def shutdown(self):
        pass


def _lrs_for(setup, point, pilots, lrs):
    """The lrs a point uses: its task's pilot, else `lr_from`'s, else the base lr; None while pending."""
    t = point["task"]
    src = t["name"] if t["name"] in pilots else t.get("lr_from", t["name"])
    if src in pilots:
        return lrs.get(src)
    return lrs.get(src) or {m: _base_lr(setup, point) for m in setup["study"]["methods"]}


def read_points(path):
    """Summary rows back from a points.csv (numbers parsed), for --replot."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if k in ("point", "task", "method", "accs"):
                continue
            r[k] = v == "True" if k == "matched" else float(v)
    return rows


def main(argv=None):
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--grid", default="full")
    ap.add_argument("--smoke", action="store_true", help="the 2-point smoke grid (CI)")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--out")
    ap.add_argument("--points", help="comma-separated point ids: run only these")
    ap.add_argument("--resume", action="store_true", help="reuse the pilots and points already finished in --out")
    ap.add_argument("--replot", metavar="DIR", help="redraw the figures of a finished study from its points.csv")
    args = ap.parse_args(argv)
    if args.replot:
        plot(read_points(Path(args.replot) / "points.csv"), args.replot, f"Regime map ({Path(args.replot).name})")
        return 0
    try:
        setup = load_study(args.config, grid=args.grid, smoke=args.smoke, seeds=args.seeds, jobs=args.jobs,
                           device=args.device)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or str(ROOT / "runs" / ("regime_map_smoke" if args.smoke else f"regime_map_{setup['grid']}"))
    _malloc_keep()
    run_study(setup, out, log=lambda m: print(m, flush=True), resume=args.resume,
              only=args.points.split(",") if args.points else None)
    return 0


if __name__ == "__main__":
    # Numba kernels next to torch: passive OpenMP waits, one thread (one process a core). Set
    # only when run as a script (workers inherit it): importing this module changes nothing.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    sys.exit(main())

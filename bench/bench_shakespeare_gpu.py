"""Seconds per FetchSGD round and peak GPU memory on tiny Shakespeare with a GPT-2-sized model.

Runs real rounds of fedsim's Simulation on ``fedsim/configs/shakespeare_gpt2.toml``
(gpt2_deep, d = 120.7M; 8 clients x 4 windows of 80 characters; a 5 x 5M sketch, k = 2M)
with each client engine in the same process, on the same data and weights:

* vmap   ``train.engine = "vmap"``: the round's clients as ONE forward/backward over their
         union batch (sum-then-sketch, exact by linearity);
* loop   ``train.engine = "loop"``: one forward/backward per client (the reference).

Prints the card, a table (median seconds per round after a warm-up round, ratio vs loop,
torch peak MB, CuPy pool MB for the sketches) and the goal (<= 0.1 s per round on an H100).
Every stage is guarded: an out-of-memory or any error becomes a row, and a hard time limit
stops a hang (partial table, exit status 2).

    python bench/bench_shakespeare_gpu.py               # the GPU run (< 90 s)
    python bench/bench_shakespeare_gpu.py --cpu-smoke   # gpt_tiny on the CPU (a smoke test)
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from fedsim.config import load_config  # noqa: E402
from fedsim.simulator import Simulation, load_run_dataset  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "fedsim", "configs", "shakespeare_gpt2.toml")
GOAL_S = 0.1


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="gpt_tiny, small sketch, on the CPU")
    p.add_argument("--rounds", type=int, default=4, help="timed rounds per engine (after one warm-up)")
    p.add_argument("--model", default=None, help="override model.name (e.g. gpt2, gpt_small)")
    p.add_argument("--time-limit", type=float, default=85.0, help="hard limit for the whole script (s)")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cupy_mb():
    """Bytes held by CuPy's pool (the sketches), in MB; NaN without CuPy."""
    cp = sys.modules.get("cupy")
    return cp.get_default_memory_pool().total_bytes() / 2**20 if cp is not None else float("nan")


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        cp = sys.modules.get("cupy")
        if cp is not None:
            cp.get_default_memory_pool().free_all_blocks()
        torch.cuda.reset_peak_memory_stats(device)


def _stage(spec, data, engine, rounds, device):
    """(median s/round, torch peak MB, cupy MB, loss after) of `rounds` timed rounds."""
    spec.train.engine = engine
    spec.train.rounds = 10_000  # no evaluation inside the timed rounds (eval_every = 1000)
    sim = Simulation(spec, dataset=data)
    sim.step()  # warm-up: kernels, CUDA graphs of cuBLAS, sketch tables
    _sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sim.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    out = statistics.median(times), peak, _cupy_mb(), sim.evaluate()[0], sim.d
    del sim
    return out


def main(argv=None):
    a = _args(sys.argv[1:] if argv is None else argv)
    rows = []
    over = []
    if a.cpu_smoke:
        over = ["train.device='cpu'", "model.name='gpt_tiny'", "rule.k=2000", "rule.cols=20000",
                "rule.sketch_backend='numpy'", "train.threads=1", "data.max_test_sequences=32"]
    if a.model:
        over.append(f"model.name='{a.model}'")
    cfg = load_config(CONFIG, over)
    (spec,) = cfg.runs(["fetchsgd"])
    device = torch.device(spec.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_shakespeare_gpu: no CUDA device (use --cpu-smoke)")
        return 1
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    timer = threading.Timer(a.time_limit, lambda: (print(f"\n(time limit of {a.time_limit:.0f} s: partial)"),
                                                   _table(rows, card, spec), sys.stdout.flush(), os._exit(2)))
    timer.daemon = True
    timer.start()
    print(f"bench_shakespeare_gpu: {card}; torch {torch.__version__}")
    data = load_run_dataset(spec.data, spec.train.seed)
    for engine in ("vmap", "loop"):
        _free(device)
        try:
            secs, peak, cupy, loss, d = _stage(spec, data, engine, a.rounds, device)
            rows.append((engine, secs, peak, cupy, loss, d, None))
            print(f"  {engine}: {secs:.4f} s/round, torch peak {peak:.0f} MB, d = {d:,}", flush=True)
        except Exception as exc:  # noqa: BLE001 - a bench reports every failure and goes on
            traceback.print_exc(file=sys.stderr)
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
            rows.append((engine, None, None, None, None, None, msg))
            print(f"  {engine}: failed: {msg}", flush=True)
    timer.cancel()
    _table(rows, card, spec)
    return 0


def _table(rows, card, spec):
    """Markdown table: engines against the loop."""
    tr, rule = spec.train, spec.rule
    base = next((r[1] for r in rows if r[0] == "loop" and r[1] is not None), None)
    d = next((r[5] for r in rows if r[5]), None)
    print()
    print(f"## FetchSGD round on tiny Shakespeare, {card}")
    print(f"model {spec.model.name} (d = {d:,}), {tr.clients_per_round} clients x {spec.data.batch_size} windows "
          f"of {spec.data.seq_len}, sketch {rule.rows} x {rule.cols:,}, k = {rule.k:,}" if d else
          f"model {spec.model.name}")
    print()
    print("| engine | s/round | speed-up vs loop | torch peak MB | CuPy pool MB | test loss after |")
    print("|---|---|---|---|---|---|")
    for engine, secs, peak, cupy, loss, _, err in rows:
        if secs is None:
            print(f"| {engine} | {err} | | | | |")
            continue
        ratio = f"{base / secs:.2f}x" if base else "-"
        print(f"| {engine} | {secs:.4f} | {ratio} | {peak:.0f} | {cupy:.0f} | {loss:.4f} |")
    best = min((r[1] for r in rows if r[1] is not None), default=None)
    if best is not None:
        print(f"\nfastest: {best:.4f} s/round (goal <= {GOAL_S} s on an H100: "
              f"{'met' if best <= GOAL_S else 'not met'})")


if __name__ == "__main__":
    sys.exit(main())

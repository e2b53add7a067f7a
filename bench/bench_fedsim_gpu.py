"""Seconds per FetchSGD round at the paper's CIFAR-10 size: batched clients vs a per-client loop.

One round = W clients (100) x n images (5) -> gradients -> Count Sketch -> FetchSGD server
step (sketched momentum and error, top-k unsketch, bucket zeroing, weight update).  Timed
in one process, on the same model, data and sketch parameters:

* loop        the reference design: per client one forward/backward, flatten the
              gradient, sketch it into its own sketch, add it to the aggregate;
* vmap-each   the batched per-client path: ``VmapEngine.gradients`` (vmap of grad) gives
              the (W, d) stack, fed to ONE batched sketch insert;
* vmap-sum    sum-then-sketch (exact by linearity): ``VmapEngine.gradient_sum`` (one
              forward/backward over the round's union batch), ONE insert;
* simulator   if fedsim's simulator is importable: a few real rounds of
              fedsim/configs/paper_cifar10.toml with engine = "vmap".

Prints the card, a table (median seconds per round, ratio vs loop, peak memory) and the
projected time of the full 2,400-round run.  Every stage is guarded: out-of-memory or any
error becomes a row saying so, the table printed so far stays, and a hard time limit
stops a hang (stacks dumped, partial table printed, exit status 2).

    python bench/bench_fedsim_gpu.py            # the H100 run (< 90 s)
    python bench/bench_fedsim_gpu.py --quick    # fewer rounds
    python bench/bench_fedsim_gpu.py --cpu-smoke  # tiny sizes on the CPU (a smoke test)
"""
from __future__ import annotations

import argparse
import faulthandler
import os
import platform
import statistics
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import adapters.torch as at  # noqa: E402
from fedsim.models import build_model  # noqa: E402
from fedsim.vmap_engine import VmapEngine  # noqa: E402

PAPER_ROUNDS = 2400  # 24 epochs x 50,000 images / (100 clients x 5 images)


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer timed rounds")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--samples", type=int, default=5, help="images per client")
    p.add_argument("--model", default="resnet9")
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--cols", type=int, default=500_000)
    p.add_argument("--k", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per stage")
    p.add_argument("--time-limit", type=float, default=80.0, help="hard limit for the whole script (s)")
    p.add_argument("--skip-simulator", action="store_true", help="only the engine-level stages")
    a = p.parse_args(argv)
    if a.cpu_smoke:
        a.device = a.device or "cpu"
        a.clients, a.samples, a.model = 8, 5, "cnn"
        a.rows, a.cols, a.k = 3, 2000, 200
        a.rounds = a.rounds or 2
        a.image = (3, 16, 16)
        # Small ops on a shared 2-core box: one thread avoids OpenMP spin contention.
        torch.set_num_threads(1)
    else:
        a.image = (3, 32, 32)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.rounds = a.rounds or (3 if a.quick else 5)
    return a


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FetchSGDServer:
    """The server step of FetchSGD (eta inside the error accumulation as in Algorithm 1; the
    reference code's bucket zeroing of error and momentum), on sketches next to the weights."""

    def __init__(self, flat, rows, cols, k, lr=0.1, rho=0.9):
        self.k, self.lr, self.rho = k, lr, rho
        if flat.device.type == "cpu":
            # NumPy, not Numba, on the CPU: Numba's OpenMP workers spin after each parallel
            # call and slow torch's next ops in the same process (up to 30x on 2 cores).
            from sketchlib import CountSketch
            self.momentum = CountSketch(flat.numel(), rows, cols, backend="numpy")
        else:
            self.momentum = at.new_sketch_like_tensor(flat, rows, cols)
        self.error = self.momentum.empty_like()
        self.device = flat.device

    def step(self, flat, aggregate):
        """Apply one round's aggregated sketch to ``flat`` (in place)."""
        with at.cuda_stream_scope(self.device):
            self.momentum.scale(self.rho).merge(aggregate)
            self.error.add_scaled(self.momentum, self.lr)
        idx, vals = at.topk(self.error, self.k)
        with at.cuda_stream_scope(self.device):
            self.error.zero_coordinates(at.to_array(idx))
            self.momentum.zero_coordinates(at.to_array(idx))
        flat.index_add_(0, idx, vals, alpha=-1.0)


class Round:
    """Shared state of the engine-level stages: model, weights, data pool, server."""

    def __init__(self, a, device):
        torch.manual_seed(0)
        self.a, self.device = a, device
        self.model = build_model(a.model, a.image, 10).to(device)
        self.flat = at.flatten_params(self.model).detach().clone()
        self.d = self.flat.numel()
        pool = max(4 * a.clients * a.samples, 64)
        g = torch.Generator(device=device).manual_seed(0)
        self.x = torch.randn((pool,) + a.image, device=device, generator=g)
        self.y = torch.randint(0, 10, (pool,), device=device, generator=g)
        self.gen = g
        self.server = FetchSGDServer(self.flat, a.rows, a.cols, min(a.k, self.d))
        self.engine = VmapEngine()

    def batches(self):
        """The round's client batches (random images from the pool; no host sync)."""
        n = self.a.clients * self.a.samples
        idx = torch.randint(0, self.x.shape[0], (n,), device=self.device, generator=self.gen)
        xs, ys = self.x[idx], self.y[idx]
        s = self.a.samples
        return [(xs[i * s:(i + 1) * s], ys[i * s:(i + 1) * s]) for i in range(self.a.clients)]

    def aggregate(self):
        return self.server.momentum.empty_like()

    def loop_round(self):
        """Reference: one forward/backward and one sketch per client."""
        nn_utils = torch.nn.utils
        nn_utils.vector_to_parameters(self.flat, self.model.parameters())
        agg = self.aggregate()
        w = 1.0 / self.a.clients
        for x, y in self.batches():
            self.model.zero_grad(set_to_none=False)
            F.cross_entropy(self.model(x), y).backward()
            g = at.flatten_grads(self.model)
            client = agg.empty_like()
            at.insert(client, g, check_finite=False)
            with at.cuda_stream_scope(self.device):
                agg.add_scaled(client, w)
        self.server.step(self.flat, agg)

    def each_round(self):
        """Batched per-client gradients (vmap) -> one batched insert."""
        stack = self.engine.gradients(self.model, self.flat, self.batches())
        agg = self.aggregate()
        at.insert_batch(agg, stack, check_finite=False)
        with at.cuda_stream_scope(self.device):
            agg.scale(1.0 / self.a.clients)
        self.server.step(self.flat, agg)

    def sum_round(self):
        """Sum-then-sketch: one forward/backward over the union batch, one insert."""
        g = self.engine.gradient_sum(self.model, self.flat, self.batches())
        agg = self.aggregate()
        at.insert(agg, g, check_finite=False)
        self.server.step(self.flat, agg)


def _time_rounds(fn, rounds, device, warmup=1):
    """Median wall seconds per call after warm-up (synchronised around each call)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _peak_mb(device):
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**20


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _guard(name, fn, device):
    """Run a stage; an OOM or error becomes a message instead of a crash."""
    try:
        return fn(), None
    except torch.cuda.OutOfMemoryError as exc:
        msg = f"out of memory ({str(exc).splitlines()[0][:80]})"
    except Exception as exc:  # noqa: BLE001 - a bench reports every failure and goes on
        traceback.print_exc(file=sys.stderr)
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
        if "cupy" in sys.modules:  # CuPy keeps its own pool (sketch tables)
            sys.modules["cupy"].get_default_memory_pool().free_all_blocks()
    print(f"  [{name}] failed: {msg}", flush=True)
    return None, msg


PAPER_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "fedsim", "configs", "paper_cifar10.toml")


def _simulator_stages(a, device, rounds, budget_end):
    """Real rounds of fedsim's Simulation on the paper config (FetchSGD), per engine.

    Yields ``(name, s/round, error, peak MB)`` rows, the last one the projected
    full run.  The paper config's data is synthetic CIFAR-10 (50,000 training
    images; a 2,000-image test set here, evaluation time scaled to 10,000).
    """
    from fedsim.config import load_config
    from fedsim.data import synthetic_cifar
    from fedsim.simulator import Simulation

    over = [f"train.device='{device}'", f"train.clients_per_round={a.clients}", f"rule.k={a.k}",
            f"rule.rows={a.rows}", f"rule.cols={a.cols}"]
    num_train, num_test = 50_000, 2_000
    if a.cpu_smoke:
        over += [f"model.name='{a.model}'", "data.num_clients=200", "train.threads=1",
                 "rule.sketch_backend='numpy'"]
        num_train, num_test = 1_000, 200
    cfg = load_config(PAPER_CONFIG, over)
    spec = cfg.runs(["fetchsgd"])[0]
    t0 = time.perf_counter()
    data = synthetic_cifar(num_train, num_test, seed=spec.train.seed)
    print(f"  simulator: synthetic CIFAR-10 ({num_train:,} images) made in {time.perf_counter() - t0:.1f} s",
          flush=True)
    result = {}
    for engine in ("loop", "vmap"):
        if time.perf_counter() > budget_end:
            yield (f"simulator, engine={engine}", None, "skipped (time budget)", float("nan"))
            continue
        spec.train.engine = engine
        _reset_peak(device)
        sim, err = _guard("simulator setup", lambda: Simulation(spec, dataset=data), device)
        if sim is None:
            yield (f"simulator, engine={engine}", None, err, float("nan"))
            continue
        n = rounds if engine == "vmap" else max(2, rounds - 2)
        res, err = _guard(f"simulator {engine}", lambda: _time_rounds(sim.step, n, device, warmup=2), device)
        result[engine] = None if res is None else res[0]
        yield (f"simulator, engine={engine}", result[engine], err, _peak_mb(device))
        if engine == "vmap" and res is not None:
            ev, err = _guard("evaluate", lambda: _time_rounds(sim.evaluate, 2, device, warmup=1), device)
            if ev is not None:
                eval_s = ev[0] * 10_000 / num_test
                evals = spec.train.rounds // spec.train.eval_every
                total = res[0] * spec.train.rounds + eval_s * evals
                print(f"  simulator: evaluation of 10,000 test images {eval_s:.3f} s", flush=True)
                yield (f"projected full FetchSGD run ({spec.train.rounds} rounds + {evals} evals)", None,
                       f"{total:.0f} s (goal < 300 s)", float("nan"))


def main(argv=None):
    a = _args(sys.argv[1:] if argv is None else argv)
    rows = []
    card = "?"
    guard = _hang_guard(a, rows, lambda: card)
    device = torch.device(a.device)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"bench_fedsim_gpu: {card}; torch {torch.__version__}")
    print(f"round: {a.clients} clients x {a.samples} images {a.image}, model {a.model}, "
          f"sketch rows={a.rows} cols={a.cols} k={a.k}; {a.rounds} timed rounds per stage")
    state, err = _guard("setup", lambda: Round(a, device), device)
    if state is None:
        print(f"setup failed: {err}")
        return 1
    print(f"d = {state.d:,} parameters; sketch backend {state.server.momentum.backend} "
          f"on {state.server.momentum.device}", flush=True)
    stages = [("loop (reference)", state.loop_round, max(2, a.rounds - 2)),
              ("vmap-each (per-client stack)", state.each_round, a.rounds),
              ("vmap-sum (sum-then-sketch)", state.sum_round, a.rounds)]
    for name, fn, rounds in stages:
        if time.perf_counter() - start > 0.6 * a.time_limit:
            rows.append((name, None, "skipped (time budget)", float("nan")))
            continue
        _reset_peak(device)
        result, err = _guard(name, lambda: _time_rounds(fn, rounds, device), device)
        rows.append((name, None if result is None else result[0], err, _peak_mb(device)))
        print(f"  {name}: " + (f"{result[0]:.4f} s/round" if result else err), flush=True)
    if not a.skip_simulator:
        stages = _simulator_stages(a, device, a.rounds, start + 0.8 * a.time_limit)
        while True:
            row, err = _guard("simulator", lambda: next(stages, None), device)
            if row is None:
                if err:
                    rows.append(("simulator", None, err, float("nan")))
                break
            rows.append(row)
            print(f"  {row[0]}: " + (f"{row[1]:.4f} s/round" if row[1] is not None else row[2]), flush=True)
    guard.cancel()
    _table(list(rows), card, a)
    return 0


def _hang_guard(a, rows, card):
    """At the time limit: dump the stacks, print the table so far, and exit (status 2)."""
    def fire():
        sys.stderr.write(f"\nbench_fedsim_gpu: time limit of {a.time_limit:.0f} s reached; stacks:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        print(f"\n(time limit of {a.time_limit:.0f} s reached: partial results)")
        _table(list(rows), card(), a)
        sys.stdout.flush()
        os._exit(2)

    timer = threading.Timer(a.time_limit, fire)
    timer.daemon = True
    timer.start()
    return timer


def _table(rows, card, a):
    """The final table: engine stages against the loop stage, simulator against its loop engine."""
    bases = {"engine": rows[0][1] if rows else None,
             "simulator": next((r[1] for r in rows if r[0] == "simulator, engine=loop"), None)}
    print()
    print(f"## fedsim round time, {card}")
    print(f"{a.clients} clients x {a.samples} images, {a.model}, sketch {a.rows}x{a.cols}, k={a.k}")
    print()
    print(f"| stage | s/round | speed-up vs loop | torch peak MB | x {PAPER_ROUNDS} rounds |")
    print("|---|---|---|---|---|")
    for name, secs, err, peak in rows:
        if secs is None:
            print(f"| {name} | {err} | | | |")
            continue
        base = bases["simulator" if name.startswith("simulator") else "engine"]
        ratio = f"{base / secs:.1f}x" if base else "-"
        print(f"| {name} | {secs:.4f} | {ratio} | {peak:.0f} | {secs * PAPER_ROUNDS:.0f} s |")
    engine_rows = [r for r in rows[1:3] if r[1] is not None]
    if bases["engine"] and engine_rows:
        fastest = min(engine_rows, key=lambda r: r[1])
        print(f"\nfastest batched stage: {fastest[0]}, {bases['engine'] / fastest[1]:.1f}x the per-client loop "
              f"(goal >= 10x); a {PAPER_ROUNDS}-round run needs <= {300 / PAPER_ROUNDS:.3f} s/round "
              f"to fit 300 s")


if __name__ == "__main__":
    sys.exit(main())

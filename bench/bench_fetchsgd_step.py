"""The whole FetchSGD server step, timed: ours (trusted path) against the same step fully validated.

One step is what ``FetchSGD._round`` does after the gradient sum: zero the
round sketch, insert the aggregate (d floats), momentum ``S_u <- rho S_u + S``,
error ``S_e <- S_e + lr S_u``, top-k of the error sketch's estimates, zero the
buckets of those k coordinates in ``S_e`` and ``S_u``, and scatter the k
values into a dense update.  "ours" runs the library code
(``FetchSGD.step_from_sketch``, which uses the trusted keywords
``check_finite=False`` / ``check_bounds=False`` where inputs are valid by
construction); the baseline, in the same process, is the same step written
with every call validated (the finiteness pass over d on insert, the index
range check of each ``zero_coordinates``), i.e. the step before issue 11.  The
two updates are compared (equal) before timing.  ``reads`` is the number of
device-to-host reads one step makes (backend transfers + fedsim reads), counted
through ``sketchlib.backends.count_host_transfers`` and
``fedsim.host.count_host_reads``; on a GPU each is a synchronisation.  The
breakdown times the sketch calls one by one (with a device synchronisation
between them, so on a GPU it is an upper bound on each part).

Goal (issue 11): the whole step <= 3 ms at d = 124M on an H100.

Usage::

    python bench/bench_fetchsgd_step.py                       # CPU: numba and numpy at 6.57M, numba at 124M
    python bench/bench_fetchsgd_step.py --device cuda         # GPU: cupy at both sizes
    python bench/bench_fetchsgd_step.py --sizes small --backends numba --reps 3
    python bench/bench_fetchsgd_step.py --markdown            # also print the table as Markdown
"""
import argparse
import os
import platform
import time

import numpy as np
import torch

from adapters.torch import cuda_stream_scope, from_array, to_array
from fedsim import make_rule, rule_params
from fedsim.host import count_host_reads
from sketchlib.backends import count_host_transfers

SIZES = {  # name: (d, rows, cols, k), as in bench/RESULTS.md and the README
    "small": (6_568_640, 5, 500_000, 50_000),
    "large": (124_439_808, 5, 1_000_000, 50_000),
    "tiny": (100_000, 5, 10_000, 1_000),   # a smoke run of the script
}
MOMENTUM, LR = 0.9, 0.1


def checked_step(rule, s, lr):
    """The step of ``step_from_sketch`` (zeroing "buckets", lr inside) with every input validated."""
    su, se = rule.state.momentum, rule.state.error
    su.scale(MOMENTUM).merge(s)
    se.add_scaled(su, lr)
    idx, vals = se.topk(rule.params.k)
    se.zero_coordinates(idx)
    su.zero_coordinates(idx)
    update = rule.zeros()
    update[from_array(idx)] = from_array(vals).to(torch.float32)
    return update


def sync(device):
    """Wait for the device (torch's and CuPy's work share torch's stream)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make(backend, d, rows, cols, k, device):
    """A FetchSGD rule and its round sketch."""
    params = rule_params("fetchsgd", k=k, rows=rows, cols=cols, momentum=MOMENTUM, sketch_backend=backend)
    rule = make_rule(params, d, device=device)
    return rule, rule.new_sketch()


def run_step(rule, s, x, trusted):
    """One whole server step from the aggregate ``x``; returns the update."""
    with cuda_stream_scope(rule.device):
        s.zero().insert(x, check_finite=not trusted)
        if trusted:
            return rule.step_from_sketch(s, LR)
        return checked_step(rule, s, LR)


def timed(fn, device, reps):
    """Median and min milliseconds of ``fn()`` over ``reps`` runs after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times)), float(min(times))


def timed_pair(fa, fb, device, reps):
    """Medians of two functions run alternately (a shared machine's load hits both alike)."""
    ta, tb = [], []
    fa(), fb()
    sync(device)
    for _ in range(reps):
        for fn, out in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(ta)), float(np.median(tb))


def reads_per_step(rule, s, x, trusted):
    """Device-to-host reads one step makes: (backend transfers, fedsim reads)."""
    with count_host_transfers() as transfers, count_host_reads() as reads:
        run_step(rule, s, x, trusted)
        sync(rule.device)
    return transfers.count, reads.count


def breakdown(rule, s, x, reps):
    """Milliseconds of each part of the trusted step (median), a device sync between parts."""
    su, se, k, dev = rule.state.momentum, rule.state.error, rule.params.k, rule.device
    parts = {}

    def part(name, fn):
        parts[name] = timed(fn, dev, reps)[0]
        return fn()

    with cuda_stream_scope(dev):
        part("insert", lambda: s.zero().insert(x, check_finite=False))
        part("mom+err", lambda: (su.scale(MOMENTUM).merge(s), se.add_scaled(su, LR)))
        idx, vals = part("topk", lambda: se.topk(k))
        part("zeroing", lambda: (se.zero_coordinates(idx, check_bounds=False),
                                 su.zero_coordinates(idx, check_bounds=False)))

        def scatter():
            update = rule.zeros()
            update[from_array(idx)] = from_array(vals).to(torch.float32)
            return update
        part("update", scatter)
    return parts


def machine(device):
    """One line describing where this ran."""
    cpu = platform.processor() or platform.machine()
    line = f"{platform.node()} | {cpu} | {os.cpu_count()} CPUs | torch {torch.__version__}"
    if device.type == "cuda":
        line += f" | {torch.cuda.get_device_name(device)}"
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--backends", default=None,
                    help="comma-separated; default: numba,numpy on cpu (numpy at 'small' only), cupy on cuda")
    ap.add_argument("--sizes", default="small,large", help="comma-separated from " + ",".join(SIZES))
    ap.add_argument("--reps", type=int, default=None, help="timed runs per case (default: cpu 3, cuda 20)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    backends = (args.backends or ("cupy" if device.type == "cuda" else "numba,numpy")).split(",")
    reps = args.reps or (20 if device.type == "cuda" else 3)
    print(machine(device))
    header = ("backend", "d", "rows", "cols", "k", "ours ms", "checked ms", "ratio", "reads ours", "reads checked",
              "insert", "mom+err", "topk", "zeroing", "update")
    rows_out = []
    for size in args.sizes.split(","):
        d, rows, cols, k = SIZES[size]
        for backend in backends:
            if backend == "numpy" and size == "large" and args.backends is None:
                continue   # the NumPy reference at 124M takes minutes per step
            g = torch.randn(d, generator=torch.Generator().manual_seed(0)).to(device)
            x = to_array(g)
            ours, s1 = make(backend, d, rows, cols, k, device)
            base, s2 = make(backend, d, rows, cols, k, device)
            u1, u2 = run_step(ours, s1, x, True), run_step(base, s2, x, False)
            assert torch.equal(u1, u2), "the trusted and the checked step disagree"
            t_ours, t_base = timed_pair(lambda: run_step(ours, s1, x, True),
                                        lambda: run_step(base, s2, x, False), device, reps)
            r_ours = sum(reads_per_step(ours, s1, x, True))
            r_base = sum(reads_per_step(base, s2, x, False))
            parts = breakdown(ours, s1, x, reps)
            rows_out.append((backend, f"{d:,}", rows, f"{cols:,}", f"{k:,}", f"{t_ours:.2f}",
                             f"{t_base:.2f}", f"{t_base / t_ours:.2f}x", r_ours, r_base)
                            + tuple(f"{parts[p]:.2f}" for p in header[10:]))
            print("  ".join(str(c) for c in rows_out[-1]), flush=True)
            del ours, base, s1, s2, g, x, u1, u2
    widths = [max(len(str(r[i])) for r in rows_out + [header]) for i in range(len(header))]
    print()
    print(machine(device))
    print(f"median of {reps} runs after a warm-up (ours and checked alternated); ratio = checked / ours; "
          "goal: <= 3 ms at d = 124M on an H100")
    for r in [header] + rows_out:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    if args.markdown:
        print()
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows_out:
            print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()

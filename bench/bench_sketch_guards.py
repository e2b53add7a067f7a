"""What the sketch's guards cost: the per-sketch lock and the overflow check, in one process.

The baseline is the unguarded path a sketch took before the guards: the
backend's ``all_finite`` check, then its ``insert_dense`` on the table.  The
guarded path is ``CountSketch.insert`` (lock, ``abs_stats`` in place of
``all_finite``, the tracked overflow bound).  Also printed: one uncontended
``RLock`` acquire/release, and ``abs_stats`` against ``all_finite`` alone.

Usage::

    python bench/bench_sketch_guards.py            # d=6,568,640, rows=5, cols=500,000
    python bench/bench_sketch_guards.py --quick    # d=1,000,000, cols=50,000
    python bench/bench_sketch_guards.py --backend numpy

Times are medians of several runs after a warm-up; ratio = guarded / baseline
(1.00 = no cost).
"""
import argparse
import os
import platform
import threading
import time
import timeit

import numpy as np

from sketchlib import CountSketch
from sketchlib.backends import get_backend


def _median_time(fn, repeat):
    """Median wall time of ``fn()`` over ``repeat`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    d, rows, cols = (1_000_000, 5, 50_000) if args.quick else (6_568_640, 5, 500_000)
    be = get_backend(args.backend)
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    sk = CountSketch(d, rows, cols, backend=args.backend)
    keys, hv = sk.keys, sk.hash_version
    table = be.zeros((rows, cols), np.float32)

    def baseline():
        assert be.all_finite(x)
        be.insert_dense(table, x, keys, hv)

    lock = threading.RLock()

    def locked():
        with lock:
            pass

    lock_us = min(timeit.repeat(locked, number=100_000, repeat=5)) / 100_000 * 1e6
    rows_out = [
        ("RLock acquire+release (uncontended)", f"{lock_us:.3f} us", "", ""),
        ("all_finite(x)", f"{_median_time(lambda: be.all_finite(x), args.repeat) * 1e3:.2f} ms", "", ""),
    ]
    t_fin = _median_time(lambda: be.all_finite(x), args.repeat)
    t_abs = _median_time(lambda: be.abs_stats(x, None), args.repeat)
    rows_out.append(("abs_stats(x) (replaces it)", f"{t_abs * 1e3:.2f} ms", f"{t_fin * 1e3:.2f} ms",
                     f"{t_abs / t_fin:.2f}"))
    t_base = _median_time(baseline, args.repeat)
    t_sk = _median_time(lambda: sk.insert(x), args.repeat)
    rows_out.append(("insert: guarded vs unguarded", f"{t_sk * 1e3:.2f} ms", f"{t_base * 1e3:.2f} ms",
                     f"{t_sk / t_base:.2f}"))
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"backend {args.backend}, d={d:,}, rows={rows}, cols={cols:,}, float32")
    print(f"{'what':40s} {'ours':>12s} {'baseline':>12s} {'ratio':>7s}")
    for what, ours, base, ratio in rows_out:
        print(f"{what:40s} {ours:>12s} {base:>12s} {ratio:>7s}")


if __name__ == "__main__":
    main()

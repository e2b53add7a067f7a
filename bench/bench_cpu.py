"""CPU benchmark: the Numba backend against the reference design, in one process.

The baseline is the design of the reference ``csvec`` Count Sketch, written
here with NumPy: bucket (int64) and sign (float32) hashes precomputed for all
``rows x d`` pairs, insert by ``np.bincount`` per row, estimates by an
``rows x d`` gather and ``np.median`` over rows, top-k by ``np.argpartition``.

Usage::

    python bench/bench_cpu.py            # d=6,568,640, rows=5, cols=500,000, k=50,000
    python bench/bench_cpu.py --quick    # small sizes, a few seconds
    python bench/bench_cpu.py --markdown # also print the table as Markdown
    python bench/bench_cpu.py --hash-version 1   # the other hash family (default: the sketch's "auto")

Times are medians of several runs after a warm-up (which also compiles the
kernels); ratio = baseline time / our time, with all Numba threads
and with one (the baseline is single-threaded NumPy; on a machine shared with
other jobs the one-thread figures are the steadier ones).  Memory: bytes allocated through
NumPy during one call, peak, from ``tracemalloc`` (it sees NumPy arrays, also
those made in Python by the backend; Numba's in-kernel scratch, a few
``rows x 2048`` blocks per thread, is not traced) plus the precomputed hashes
the baseline keeps per coordinate.
"""
import argparse
import os
import platform
import time
import tracemalloc

import numpy as np

from sketchlib import CountSketch
from sketchlib.backends import get_backend
from sketchlib.hashing import buckets_and_signs


class Baseline:
    """The reference design: precomputed per-coordinate hashes."""

    def __init__(self, d, rows, cols, keys, version):
        self.d, self.rows, self.cols = d, rows, cols
        self.buckets = np.empty((rows, d), np.int64)
        self.signs = np.empty((rows, d), np.float32)
        idx = np.arange(d, dtype=np.int64)
        for j in range(rows):
            b, s = buckets_and_signs(idx, keys[j, 0], keys[j, 1], cols, version)
            self.buckets[j], self.signs[j] = b, s
        self.table = np.zeros((rows, cols), np.float32)

    @property
    def hash_bytes(self):
        return self.buckets.nbytes + self.signs.nbytes

    def insert(self, x):
        for j in range(self.rows):
            self.table[j] += np.bincount(self.buckets[j], weights=self.signs[j] * x,
                                         minlength=self.cols).astype(np.float32)

    def query(self, idx):
        vals = self.table[np.arange(self.rows)[:, None], self.buckets[:, idx]] * self.signs[:, idx]
        return np.median(vals, axis=0)

    def estimate_all(self):
        vals = self.table[np.arange(self.rows)[:, None], self.buckets] * self.signs
        return np.median(vals, axis=0)

    def unsketch(self, k):
        est = self.estimate_all()
        top = np.argpartition(-np.abs(est), k - 1)[:k]
        out = np.zeros(self.d, np.float32)
        out[top] = est[top]
        return out


def machine():
    """One line describing the CPU and library versions."""
    import numba
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {os.cpu_count()} cores, numba threads {numba.get_num_threads()}, "
            f"numpy {np.__version__}, numba {numba.__version__}, python {platform.python_version()}, "
            f"load avg {load:.2f}")


def timed(fn, repeats):
    """Median and min seconds of ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def peak_bytes(fn):
    """Peak bytes allocated through traced allocators while ``fn`` runs."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def mb(n):
    return f"{n / 2**20:.1f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    ap.add_argument("--hash-version", default="auto", help="1, 2 or auto (the sketch's default)")
    args = ap.parse_args()
    if args.quick:
        d, rows, cols, k, nq, repeats = 200_000, 5, 20_000, 2_000, 5_000, 3
    else:
        d, rows, cols, k, nq, repeats = 6_568_640, 5, 500_000, 50_000, 50_000, 5
    repeats = args.repeats or repeats

    rng = np.random.default_rng(0)
    x = rng.standard_normal(d).astype(np.float32)
    qidx = rng.integers(0, d, size=nq)
    hv = args.hash_version if args.hash_version == "auto" else int(args.hash_version)
    ours = CountSketch(d, rows, cols, hash_version=hv, backend="numba")
    t0 = time.perf_counter()
    base = Baseline(d, rows, cols, ours.keys, ours.hash_version)
    setup = time.perf_counter() - t0
    base.insert(x)
    ours.insert(x)
    assert np.allclose(base.table, ours.table, rtol=1e-4, atol=1e-3), "tables disagree"
    b_top = np.sort(np.abs(base.unsketch(k)))[-k:]
    o_top = np.sort(np.abs(ours.unsketch(k)))[-k:]
    assert np.allclose(b_top, o_top, rtol=1e-4, atol=1e-3), "top-k disagree"

    stack = np.stack([x, -x[::-1], 0.5 * x, x[::-1]])

    def insert_batch_base():
        for v in stack:
            base.insert(v)

    numba_cpu = get_backend("numba")   # the module: its STORE_ESTIMATES switch is a documented knob

    def unsketch_two_pass():
        numba_cpu.STORE_ESTIMATES = False
        try:
            ours.unsketch(k)
        finally:
            numba_cpu.STORE_ESTIMATES = True

    cases = [
        ("insert (dense d)", lambda: base.insert(x), lambda: ours.insert(x)),
        (f"query ({nq:,} indices)", lambda: base.query(qidx), lambda: ours.query(qidx)),
        ("estimate_all", base.estimate_all, ours.estimate_all),
        (f"top-k unsketch (k={k:,})", lambda: base.unsketch(k), lambda: ours.unsketch(k)),
        (f"  same, two passes, no d buffer", lambda: base.unsketch(k), unsketch_two_pass),
        ("insert_batch (4 x d)", insert_batch_base, lambda: ours.insert_batch(stack)),
    ]
    print(f"machine: {machine()}")
    print(f"sizes: d={d:,} rows={rows} cols={cols:,} k={k:,} float32, hash version {ours.hash_version}, "
          f"{repeats} runs after warm-up")
    print(f"baseline keeps precomputed hashes: {mb(base.hash_bytes)} "
          f"({12 * rows} bytes per coordinate; built in {setup:.2f} s); ours keeps none")
    import numba
    threads = numba.get_num_threads()

    def one_thread(fn):
        def run():
            numba.set_num_threads(1)
            try:
                fn()
            finally:
                numba.set_num_threads(threads)
        return run

    head = (f"{'operation':32s} {'baseline ms':>12s} {'ours ms':>9s} {'ratio':>7s} "
            f"{'ours 1-thr ms':>14s} {'ratio':>7s} {'base peak':>11s} {'our peak':>10s}")
    print(head)
    print("-" * len(head))
    lines = []
    for name, fb, fo in cases:
        tb, _ = timed(fb, repeats)
        to, _ = timed(fo, repeats)
        t1, _ = timed(one_thread(fo), repeats)
        mbb, mbo = peak_bytes(fb), peak_bytes(fo)
        print(f"{name:32s} {tb * 1e3:12.2f} {to * 1e3:9.2f} {tb / to:6.1f}x "
              f"{t1 * 1e3:14.2f} {tb / t1:6.1f}x {mb(mbb):>11s} {mb(mbo):>10s}")
        lines.append((name.strip(), tb, to, t1, mbb, mbo))
    if args.markdown:
        print()
        print(f"| operation | baseline ms | ours ms ({threads} threads) | ratio | ours ms (1 thread) | ratio "
              "| baseline peak extra | ours peak extra |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, tb, to, t1, mbb, mbo in lines:
            print(f"| {name} | {tb * 1e3:.2f} | {to * 1e3:.2f} | {tb / to:.1f}x | {t1 * 1e3:.2f} | "
                  f"{tb / t1:.1f}x | {mb(mbb)} | {mb(mbo)} |")


if __name__ == "__main__":
    main()

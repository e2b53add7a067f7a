"""Overhead of the torch/DLPack adapters vs calling the sketch on native arrays, same process.

For each device available (CUDA if torch and CuPy see one, and the CPU), times:
insert of a d-vector, top-k of the estimates, and the table -> tensor view,
through ``adapters.torch`` (tensors in and out, on torch's current stream)
against the baseline ``CountSketch`` call on a CuPy/NumPy array that already
exists.  Ratio ~1 means the adapter adds nothing but a few microseconds.

Usage: ``python bench/bench_adapters_gpu.py [--quick]`` (well under a minute).
"""
import argparse
import platform
import statistics
import time

import numpy as np
import torch

from adapters import dlpack as adl
from adapters import torch as at
from sketchlib import available_backends


def _timer(device):
    """A function timing ``fn`` (median ms over ``reps`` after warm-up) on ``device``."""
    def run(fn, reps):
        for _ in range(2):
            fn()
        times = []
        for _ in range(reps):
            if device == "cuda":
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return run


def bench(device, d, rows, cols, k, reps):
    """Rows of (operation, adapter ms, baseline ms) for one device."""
    timed = _timer(device)
    x = torch.randn(d, device=device)
    s = at.new_sketch_like_tensor(x, rows, cols)
    native = at.to_array(x)
    zero_copy = (native.data.ptr if device == "cuda" else native.ctypes.data) == x.data_ptr()
    with at.cuda_stream_scope(x):
        out = [
            ("insert (torch tensor)", timed(lambda: at.insert(s.zero(), x), reps),
             timed(lambda: s.zero().insert(native), reps)),
            ("insert (DLPack producer)", timed(lambda: adl.insert(s.zero(), x), reps),
             timed(lambda: s.zero().insert(native), reps)),
            (f"top-k k={k} -> tensors", timed(lambda: at.topk(s, k), reps),
             timed(lambda: s.topk(k), reps)),
            ("table_as_tensor", timed(lambda: at.table_as_tensor(s), reps),
             timed(lambda: s.table, reps)),
        ]
    return s.backend, zero_copy, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    args = parser.parse_args()
    print(f"machine: {platform.node()} | {platform.processor() or platform.machine()} | "
          f"torch {torch.__version__} | backends {available_backends()}")
    plans = []
    if torch.cuda.is_available() and "cupy" in available_backends():
        print(f"GPU: {torch.cuda.get_device_name()}")
        plans.append(("cuda", 6_570_000, 5, 500_000, 50_000, 5 if args.quick else 20))
    else:
        print("GPU: none usable (CUDA rows skipped)")
    d_cpu = 200_000 if args.quick else 1_000_000
    plans.append(("cpu", d_cpu, 5, d_cpu // 13, d_cpu // 100, 3 if args.quick else 5))
    header = (f"{'device':6} {'backend':7} {'d':>9} {'r':>2} {'c':>8} {'operation':28} "
              f"{'adapter ms':>11} {'native ms':>10} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for device, d, rows, cols, k, reps in plans:
        backend, zero_copy, rows_out = bench(device, d, rows, cols, k, reps)
        for name, ours, base in rows_out:
            ratio = ours / base if base > 0 else float("nan")
            print(f"{device:6} {backend:7} {d:9d} {rows:2d} {cols:8d} {name:28} {ours:11.4f} {base:10.4f} {ratio:6.2f}")
        print(f"{device:6} tensor -> array zero-copy: {'yes' if zero_copy else 'NO'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

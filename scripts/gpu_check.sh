#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA device and CuPy:
#   1. all tests marked gpu (per-file results from a JUnit report),
#   2. bench/bench_gpu.py, then every other bench/bench_*gpu*.py present,
# logs under ${OUT:-/tmp/gpu_out}; a short summary table is printed LAST.
# Run from anywhere: it cd's to the repository root and sets PYTHONPATH=. .
# No installs, no network.  Time limits (seconds) can be overridden:
#   GPU_TEST_TIMEOUT (default 150), GPU_BENCH_TIMEOUT (150), GPU_OTHER_TIMEOUT (90).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp/gpu_out}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
START=$(date +%s)

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$LOG/device.txt"
$PY -c "import cupy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__)" 2>&1 | tee -a "$LOG/device.txt"

echo "== tests (-m gpu)"
timeout "${GPU_TEST_TIMEOUT:-150}" $PY -m pytest -q -m gpu tests/ -p no:cacheprovider \
    --junitxml="$LOG/gpu_tests.xml" >"$LOG/gpu_tests.log" 2>&1
echo "pytest rc=$?" >>"$LOG/gpu_tests.log"
tail -n 40 "$LOG/gpu_tests.log"

BENCHES="bench/bench_gpu.py"
for f in bench/bench_*gpu*.py; do
    [ -e "$f" ] && [ "$f" != bench/bench_gpu.py ] && BENCHES="$BENCHES $f"
done
: >"$LOG/benches.txt"
for b in $BENCHES; do
    name=$(basename "$b" .py)
    echo "== $b"
    t0=$(date +%s)
    if [ "$b" = bench/bench_gpu.py ]; then
        timeout "${GPU_BENCH_TIMEOUT:-150}" $PY "$b" --json "$LOG/bench_gpu.json" >"$LOG/$name.log" 2>&1
    else
        timeout "${GPU_OTHER_TIMEOUT:-90}" $PY "$b" >"$LOG/$name.log" 2>&1
    fi
    rc=$?
    echo "$name $rc $(( $(date +%s) - t0 ))" >>"$LOG/benches.txt"
    tail -n 30 "$LOG/$name.log"
done

echo
echo "================ GPU CHECK SUMMARY ($(( $(date +%s) - START )) s) ================"
$PY - "$LOG" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
log = sys.argv[1]
print(open(os.path.join(log, "device.txt")).read().strip())
path = os.path.join(log, "gpu_tests.xml")
if os.path.exists(path):
    per = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        parts = (case.get("classname") or "?").split(".")
        last = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        f = "/".join(parts[:last + 1]) + ".py"
        c = per.setdefault(f, {"passed": 0, "failed": 0, "error": 0, "skipped": 0})
        kinds = [child.tag for child in case]
        key = "failed" if "failure" in kinds else "error" if "error" in kinds else \
              "skipped" if "skipped" in kinds else "passed"
        c[key] += 1
    print(f"{'test file':44} {'pass':>5} {'fail':>5} {'error':>5} {'skip':>5}")
    for f, c in sorted(per.items()):
        print(f"{f:44} {c['passed']:5d} {c['failed']:5d} {c['error']:5d} {c['skipped']:5d}")
else:
    print("no JUnit report: pytest did not finish (see gpu_tests.log)")
print(f"{'bench':44} {'rc':>5} {'s':>5}")
for line in open(os.path.join(log, "benches.txt")):
    name, rc, secs = line.split()
    print(f"{name:44} {rc:>5} {secs:>5}")
path = os.path.join(log, "bench_gpu.json")
if os.path.exists(path):
    data = json.load(open(path))
    print(f"key timings on {data['card']} (ms; goal from the issue):")
    for r in data["results"]:
        if "[" in r["op"] and "each" not in r["op"]:
            continue
        base = "-" if r["base_ms"] is None else f"{r['base_ms']:.3f}"
        goal = "-" if r["goal_ms"] is None else f"{r['goal_ms']:.2f}"
        print(f"  {r['size']:8} {r['op']:40} ours {r['ours_ms']:8.3f}  base {base:>8}  goal {goal:>6}")
EOF

# =====================================================================================
# Issue 12: tiny Shakespeare / character transformer (appended block; separate from the above).
# bench/bench_shakespeare_gpu.py (gpt2_deep, d = 120.7M: s per FetchSGD round and peak memory,
# vmap vs loop engine) already ran in the bench loop above. Here: the d = 10.7M study config,
# FetchSGD first, then the other methods while the time limit lasts (SHAKESPEARE_TIMEOUT, s).
# Full study by hand: fedsim run --config fedsim/configs/shakespeare_gpu.toml
# ============================================================================================
echo
echo "== shakespeare_gpu.toml (d = 10.7M, 1,500 rounds; FetchSGD first)"
SH_T0=$(date +%s)
timeout "${SHAKESPEARE_TIMEOUT:-300}" $PY -m fedsim run --config fedsim/configs/shakespeare_gpu.toml \
    --only fetchsgd --out "$LOG/shakespeare_gpu" --no-progress >"$LOG/shakespeare_gpu_fetchsgd.log" 2>&1
echo "shakespeare_gpu fetchsgd rc=$? $(( $(date +%s) - SH_T0 )) s"
tail -n 8 "$LOG/shakespeare_gpu_fetchsgd.log"
if [ "${SHAKESPEARE_ALL:-0}" = 1 ]; then
    timeout "${SHAKESPEARE_TIMEOUT:-300}" $PY -m fedsim run --config fedsim/configs/shakespeare_gpu.toml \
        --out "$LOG/shakespeare_gpu" --resume --no-progress >"$LOG/shakespeare_gpu_all.log" 2>&1
    echo "shakespeare_gpu all rc=$? $(( $(date +%s) - SH_T0 )) s"
    tail -n 10 "$LOG/shakespeare_gpu_all.log"
fi
=======
# Issue 11: the whole FetchSGD server step at d = 6.57M and 124M (goal <= 3 ms at 124M on an H100).
echo "== bench/bench_fetchsgd_step.py --device cuda"; timeout "${GPU_STEP_TIMEOUT:-150}" $PY bench/bench_fetchsgd_step.py --device cuda --markdown 2>&1 | tee "$LOG/bench_fetchsgd_step.log" | tail -n 12

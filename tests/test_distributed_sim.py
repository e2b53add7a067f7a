"""Distributed simulation on loopback (gloo): 2 ranks == 1 process, dead ranks, checkpoints.

Real processes: ranks are launched as ``python -m fedsim.distributed run`` with the
environment torchrun sets (and once through torchrun itself), on 127.0.0.1.
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedsim._fault import KILL_AFTER_ROUND_ENV, KILL_RANK_ENV
from fedsim.config import load_config
from fedsim.simulator import run_experiment

ROOT = Path(__file__).resolve().parents[1]
MLP_DIGITS_D = 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10  # the "mlp" model on 8x8 digits
LAUNCH_TIMEOUT = 90

CONFIG = f"""
[data]
dataset = "digits"
partition = "pathological"
num_clients = 40

[model]
name = "mlp"

[train]
rounds = 4
clients_per_round = 8
lr = 0.1
eval_every = 4
threads = 1
engine = "vmap"

[rule]
rows = 3
cols = 2000
sketch_backend = "numpy"

[output]
plot = false
progress = false
checkpoint_every = 1

[[methods]]
label = "uncompressed"
rule = "uncompressed"

[[methods]]
# k = d: the unsketch keeps every coordinate, so the trajectory is a continuous
# function of the sums and float summation order cannot flip a top-k choice.
label = "fetchsgd_all"
rule = "fetchsgd"
k = {MLP_DIGITS_D}

[[methods]]
label = "fetchsgd"
rule = "fetchsgd"
k = 200

[[methods]]
# The per-client paths of the engine: per-client gradients (vmap) and local training.
label = "local_topk_all"
rule = "local_topk"
k = {MLP_DIGITS_D}

[[methods]]
label = "fedavg"
rule = "fedavg"
local_epochs = 2
local_batch_size = 2
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def _launch(nprocs, args, cwd, timeout=LAUNCH_TIMEOUT, rank_args=None, extra_env=None):
    """Start ``nprocs`` ranks with torchrun's environment; return [(returncode, stderr, seconds)].

    ``rank_args[r]``, when given, is appended to rank r's arguments.
    """
    port = _free_port()
    procs = []
    for rank in range(nprocs):
        env = _env({"RANK": str(rank), "WORLD_SIZE": str(nprocs), "LOCAL_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **(extra_env or {})})
        extra = rank_args[rank] if rank_args else []
        procs.append((subprocess.Popen([sys.executable, "-m", "fedsim.distributed", "run", *args, *extra], cwd=cwd,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                      time.monotonic()))
    out = []
    try:
        for p, start in procs:
            _, err = p.communicate(timeout=max(1, timeout - (time.monotonic() - start)))
            out.append((p.returncode, err, time.monotonic() - start))
    except subprocess.TimeoutExpired:
        for p, _ in procs:
            p.kill()
        pytest.fail(f"ranks still running after {timeout} s (a hang)")
    return out


def _stderr(results):
    """Every rank's exit code and stderr tail, for assertion messages."""
    return "\n".join(f"--- rank {r}: exit {code}\n{err[-1500:]}" for r, (code, err, _) in enumerate(results))


def _params(run_dir):
    return torch.load(Path(run_dir) / "final_params.pt")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The config file and the uninterrupted one-process run (in this process)."""
    base = tmp_path_factory.mktemp("dist")
    cfg_path = base / "tiny.toml"
    cfg_path.write_text(CONFIG)
    torch_threads = torch.get_num_threads()
    try:
        run_experiment(load_config(str(cfg_path), []), out_dir=base / "one", log=lambda m: None)
    finally:
        torch.set_num_threads(torch_threads)
    return base, cfg_path


def _assert_same_trajectory(one, two, label, strict):
    a, b = _params(one / label), _params(two / label)
    if strict:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    else:
        # k < d: float summation order can swap near-tied top-k picks; stay within 1%.
        assert float((a - b).norm() / a.norm()) < 1e-2


def test_two_ranks_follow_one_process_via_torchrun(setup):
    base, cfg = setup
    port = _free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), "-m", "fedsim.distributed", "run", "--config", str(cfg),
         "--out", str(base / "two")],
        cwd=base, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks, backend gloo" in proc.stderr
    for label, strict in (("uncompressed", True), ("fetchsgd_all", True), ("fetchsgd", False),
                          ("local_topk_all", True), ("fedavg", True)):
        _assert_same_trajectory(base / "one", base / "two", label, strict)
    # Only rank 0 writes: one metrics file per run, with every round once.
    lines = (base / "two" / "uncompressed" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 4


def test_a_dead_rank_makes_the_others_fail_clearly(setup):
    base, cfg = setup
    results = _launch(2, ["--config", str(cfg), "--only", "uncompressed", "--out", str(base / "dead"),
                          "--timeout", "20"], cwd=base,
                      extra_env={KILL_AFTER_ROUND_ENV: "2", KILL_RANK_ENV: "1"})
    (rc0, err0, secs0), (rc1, _, _) = results
    assert rc1 == -9  # rank 1 SIGKILLed itself after round 2
    assert rc0 == 3, err0[-2000:]
    assert "rank 0/2" in err0 and "another rank probably died" in err0
    assert secs0 < 40


def test_checkpoint_of_two_ranks_resumes_in_one_process_and_back(setup):
    base, cfg = setup
    ckpt_dir = base / "ckpt2"
    results = _launch(2, ["--config", str(cfg), "--only", "fetchsgd_all", "--out", str(ckpt_dir)], cwd=base,
                      extra_env={KILL_AFTER_ROUND_ENV: "2"})
    assert [r[0] for r in results] == [-9, -9], _stderr(results)
    assert (ckpt_dir / "fetchsgd_all" / "checkpoint.ckpt").exists()
    assert not (ckpt_dir / "fetchsgd_all" / "final_params.pt").exists()
    # Resume on one process (in this process).
    threads = torch.get_num_threads()
    try:
        run_experiment(load_config(str(cfg), []), only=["fetchsgd_all"], out_dir=ckpt_dir, resume=True,
                       log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    _assert_same_trajectory(base / "one", ckpt_dir, "fetchsgd_all", strict=True)

    # And back: a one-process checkpoint (rounds 1-2 here, through the Simulation API) resumed
    # on two ranks.
    from fedsim.simulator import Simulation

    ckpt_dir1 = base / "ckpt1"
    spec = load_config(str(cfg), []).runs(["uncompressed"])[0]
    sim = Simulation(spec, out_dir=ckpt_dir1 / "uncompressed")
    try:
        for _ in range(2):
            sim.step()
        sim.save_checkpoint()
    finally:
        torch.set_num_threads(threads)
    # Ranks that see different output folders (no shared filesystem) must refuse to resume.
    results = _launch(2, ["--config", str(cfg), "--only", "uncompressed", "--resume"], cwd=base,
                      rank_args=[["--out", str(ckpt_dir1)], ["--out", str(base / "elsewhere")]])
    assert [r[0] for r in results] == [3, 3], _stderr(results)
    assert "checkpoints" in results[0][1] and "shared filesystem" in results[0][1]
    results = _launch(2, ["--config", str(cfg), "--only", "uncompressed", "--out", str(ckpt_dir1), "--resume"],
                      cwd=base)
    assert [r[0] for r in results] == [0, 0], _stderr(results)
    _assert_same_trajectory(base / "one", ckpt_dir1, "uncompressed", strict=True)
    metrics = (ckpt_dir1 / "uncompressed" / "metrics.csv").read_text().splitlines()
    assert [m.split(",")[0] for m in metrics[1:]] == ["1", "2", "3", "4"]


def test_ranks_with_different_configs_refuse_to_run(setup):
    base, cfg = setup
    other = base / "other.toml"
    other.write_text(CONFIG.replace("lr = 0.1", "lr = 0.2"))
    port = _free_port()
    procs = []
    for rank, path in enumerate((cfg, other)):
        env = _env({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen([sys.executable, "-m", "fedsim.distributed", "run", "--config", str(path),
                                       "--out", str(base / "mismatch")], cwd=base, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=LAUNCH_TIMEOUT)[1] for p in procs]
    assert [p.returncode for p in procs] == [3, 3]
    assert all("disagree on the configuration" in e for e in errs)


def test_launch_outside_torchrun_says_how(tmp_path):
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "fedsim.distributed", "run", "--rounds", "1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 3
    assert "torchrun" in proc.stderr and "RANK" in proc.stderr


def test_watchdog_ends_a_process_stuck_in_a_collective(tmp_path):
    """NCCL may never notice a dead peer: the watchdog must end the process itself."""
    code = ("import time\nfrom fedsim.distributed import _Watchdog\n"
            "w = _Watchdog(0.5, rank=1)\nw.enter('all_reduce #7')\ntime.sleep(30)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    from fedsim.distributed import WATCHDOG_EXIT_CODE

    assert proc.returncode == WATCHDOG_EXIT_CODE
    assert "rank 1: all_reduce #7 has waited more than" in proc.stderr
    assert time.monotonic() - start < 15


def test_watchdog_leaves_a_finished_collective_alone():
    from fedsim.distributed import _Watchdog

    w = _Watchdog(0.2, rank=0)
    w.enter("all_reduce #1")
    w.leave()
    time.sleep(0.5)  # still alive: the watchdog would have ended this process
    w.stop()


@pytest.mark.gpu
def test_nccl_rank_on_cuda_follows_one_process(tmp_path):
    """The NCCL path (one rank per GPU; one GPU here): same run as a plain CUDA process."""
    cfg_path = tmp_path / "cuda.toml"
    cfg_path.write_text(CONFIG.replace('engine = "vmap"', 'engine = "vmap"\ndevice = "cuda"')
                        .replace('sketch_backend = "numpy"', 'sketch_backend = "auto"'))
    threads = torch.get_num_threads()
    try:
        run_experiment(load_config(str(cfg_path), []), only=["uncompressed", "fetchsgd_all"],
                       out_dir=tmp_path / "one", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    results = _launch(1, ["--config", str(cfg_path), "--only", "uncompressed,fetchsgd_all", "--out",
                          str(tmp_path / "nccl")], cwd=tmp_path)
    assert results[0][0] == 0, results[0][1][-3000:]
    assert "backend nccl" in results[0][1]
    for label in ("uncompressed", "fetchsgd_all"):
        a, b = _params(tmp_path / "one" / label), _params(tmp_path / "nccl" / label)
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)

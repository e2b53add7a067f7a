"""The command line, including a real kill (SIGKILL) and --resume that must match an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from fedsim._fault import KILL_AFTER_ROUND_ENV
from fedsim.checkpoint import load_checkpoint
from fedsim.cli import main

REPO = Path(__file__).resolve().parents[1]

TINY_TOML = """
[data]
num_clients = 30
[train]
rounds = 8
clients_per_round = 4
lr = 0.2
eval_every = 2
threads = 1
[rule]
k = 60
rows = 3
cols = 600
[output]
checkpoint_every = 3
progress = false
plot = false
[[methods]]
label = "fetch"
rule = "fetchsgd"
[[methods]]
label = "local"
rule = "local_topk"
local_error_feedback = true
"""


def _cli(args, cwd, extra_env=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "fedsim", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    full = _cli(["run", "--config", str(cfg), "--out", "full"], tmp_path)
    assert full.returncode == 0, full.stderr
    killed = _cli(["run", "--config", str(cfg), "--out", "cut"], tmp_path, {KILL_AFTER_ROUND_ENV: "5"})
    assert killed.returncode == -signal.SIGKILL
    cut = tmp_path / "cut" / "fetch"
    assert len((cut / "metrics.csv").read_text().splitlines()) == 1 + 5  # header + rounds 1-5
    assert not (cut / "final_params.pt").exists()
    resumed = _cli(["run", "--config", str(cfg), "--out", "cut", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for run in ("fetch", "local"):
        a, b = tmp_path / "full" / run, tmp_path / "cut" / run
        assert torch.equal(torch.load(a / "final_params.pt"), torch.load(b / "final_params.pt"))
        assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
        sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
        sa.pop("seconds"), sb.pop("seconds")
        pa, pb = sa.pop("provenance"), sb.pop("provenance")  # times and command lines differ
        assert pa["git_commit"] == pb["git_commit"] and "resumed_at_round" not in pa
        assert pb.get("resumed_at_round") == (3 if run == "fetch" else None)  # its last checkpoint: round 3
        assert sa == sb
        # the final checkpoints hold identical sketches / errors, byte counters and RNG state
        ca = load_checkpoint(a / "checkpoint.ckpt", sa["config_hash"])
        cb = load_checkpoint(b / "checkpoint.ckpt", sb["config_hash"])
        for part in ("rule", "accounting"):
            for key, value in ca[part].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, cb[part][key]), (run, part, key)
                elif isinstance(value, dict):
                    assert value.keys() == cb[part][key].keys()
                    assert all(torch.equal(v, cb[part][key][c]) for c, v in value.items())
                else:
                    assert value == cb[part][key]
        assert torch.equal(ca["torch_rng"], cb["torch_rng"])
    assert (tmp_path / "full" / "table.txt").read_text() == (tmp_path / "cut" / "table.txt").read_text()
    # resuming with another configuration is refused with a clear message
    (tmp_path / "cut" / "local" / "summary.json").unlink()
    other = _cli(["run", "--config", str(cfg), "--out", "cut", "--resume", "--set", "rule.k=61",
                  "--only", "local"], tmp_path)
    assert other.returncode == 2
    assert "another configuration" in other.stderr


def test_cli_overrides_and_errors(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    assert main(["config", "--config", str(cfg), "--set", "rule.k=77", "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    assert "k = 77" in out and "rounds = 3" in out and "# run fetch" in out
    assert main(["run", "--config", str(cfg), "--set", "rule.colz=3"]) == 2
    assert "unknown key rule.colz" in capsys.readouterr().err
    assert main(["run", "--config", str(cfg), "--rule", "nosuch"]) == 2
    assert "unknown rule 'nosuch'" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_single_rule_run_writes_outputs(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    rc = main(["run", "--config", str(cfg), "--rule", "fedavg", "--rounds", "2", "--out", str(tmp_path / "o"),
               "--metrics", "jsonl"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fedavg" in out and "overall x" in out
    assert len((tmp_path / "o" / "fedavg" / "metrics.jsonl").read_text().splitlines()) == 2

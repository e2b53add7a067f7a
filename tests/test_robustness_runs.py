"""Runs and their folders (issue 10): one run per folder (real processes), unique run folders,
non-finite hyperparameters, a NaN inside a rule, --resume over damaged files, clear messages."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim import ConfigError, parse_config, run_experiment
from fedsim.checkpoint import load_checkpoint, save_checkpoint
from fedsim.cli import main
from fedsim.config import load_config
from fedsim.layout import LOCK_NAME, check_run_folders, run_folder_name
from fedsim.rules import RULES, RuleParams, ServerRule, knob, register_rule

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"dataset": "digits", "num_clients": 20},
    "model": {"name": "mlp"},
    "train": {"rounds": 4, "clients_per_round": 4, "lr": 0.2, "eval_every": 2, "threads": 1},
    "rule": {"k": 60, "rows": 3, "cols": 600, "sketch_backend": "numpy"},
    "output": {"progress": False, "plot": False, "checkpoint_every": 2},
}


def _cfg(rules=("fetchsgd",), **sections):
    raw = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    raw["methods"] = [{"label": r, "rule": r} for r in rules]
    return parse_config(raw)


def _quiet(msg):
    pass


# ----------------------------------------------------------------- 5. one run per output folder
def _fedsim(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "fedsim", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_second_run_into_one_folder_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path, caplog):
    base = ["--rule", "fedavg", "--set", "data.num_clients=20", "--set", "train.clients_per_round=2",
            "--set", "train.threads=1", "--no-plot", "--no-progress", "--out", "out"]
    holder = _fedsim(base + ["--rounds", "100000"], tmp_path)
    lock = tmp_path / "out" / LOCK_NAME
    try:
        deadline = time.time() + 120
        while not (lock.exists() and f"pid {holder.pid}" in lock.read_text()):
            assert holder.poll() is None, holder.communicate()
            assert time.time() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        second = _fedsim(base + ["--rounds", "2"], tmp_path)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert f"pid {holder.pid}" in err and "in use" in err
        assert holder.poll() is None  # the first run was not disturbed
        assert not (tmp_path / "out" / "table.txt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    with caplog.at_level("WARNING", logger="fedsim"):  # the next run (here in this process) takes over
        run_experiment(_cfg(("fedavg",), train={"rounds": 2}), out_dir=tmp_path / "out", log=_quiet)
    assert any("taking over" in r.getMessage() and f"pid {holder.pid}" in r.getMessage() for r in caplog.records)
    assert "fedavg" in (tmp_path / "out" / "table.txt").read_text()
    assert lock.read_text() == ""  # released at the end


def test_in_process_experiments_on_one_folder_exclude_each_other(tmp_path):
    cfg = _cfg(train={"rounds": 2})
    seen = []

    def nested(msg):  # while the first experiment runs, a second one on the same folder must refuse
        if not seen:
            with pytest.raises(Exception, match="in use by pid") as info:
                run_experiment(cfg, out_dir=tmp_path, log=_quiet)
            seen.append(type(info.value).__name__)

    run_experiment(cfg, out_dir=tmp_path, log=nested)
    assert seen == ["OutputFolderBusy"]
    run_experiment(cfg, out_dir=tmp_path, log=_quiet)  # free again afterwards


def test_distributed_ranks_all_stop_when_rank_0_cannot_lock(tmp_path):
    import socket

    from fedsim._lock import OutputLock

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--rule", "fedavg", "--rounds", "2", "--set", "data.num_clients=20", "--no-plot", "--no-progress",
            "--out", "busy"]
    with OutputLock(tmp_path / "busy"):
        procs = []
        for rank in range(2):
            env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                       OMP_NUM_THREADS="1", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            procs.append(subprocess.Popen([sys.executable, "-m", "fedsim.distributed", "run", *args], cwd=tmp_path,
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        errs = [p.communicate(timeout=120)[1] for p in procs]  # a hang would time out here
    assert [p.returncode for p in procs] == [2, 2], errs
    assert f"pid {os.getpid()}" in errs[0]
    assert not (tmp_path / "busy" / "fedavg").exists()


def test_an_output_folder_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "f").write_text("not a folder")
    assert main(["run", "--rule", "fedavg", "--rounds", "1", "--no-plot", "--out", str(tmp_path / "f")]) == 2
    assert "cannot use" in capsys.readouterr().err and (tmp_path / "f").read_text() == "not a folder"


def test_a_simulation_refuses_a_run_folder_in_use(tmp_path):
    from fedsim import OutputFolderBusy, Simulation
    from fedsim._lock import OutputLock

    spec = _cfg(train={"rounds": 1}).runs()[0]
    with OutputLock(tmp_path / "run"):
        with pytest.raises(OutputFolderBusy, match=f"pid {os.getpid()}"):
            Simulation(spec, out_dir=tmp_path / "run").run()
        assert not (tmp_path / "run" / "metrics.csv").exists()
    assert Simulation(spec, out_dir=tmp_path / "run").run().status == "ok"


def _hammer(path, n, tag):
    """Write n checkpoints to one path (run in threads and in forked processes)."""
    for i in range(n):
        save_checkpoint(path, {"who": tag, "i": i, "x": torch.full((2000,), float(i))}, "0" * 64)


def test_concurrent_checkpoint_writes_never_collide(tmp_path):
    path = tmp_path / "run" / "checkpoint.ckpt"
    errors = []

    def worker(tag):
        try:
            _hammer(path, 25, tag)
        except Exception as exc:  # the old fixed temporary name raced here (FileNotFoundError)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"t{j}",)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(path, 25, f"p{j}")) for j in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    payload = load_checkpoint(path, "0" * 64)  # whole: one writer's last checkpoint
    assert payload["i"] == 24 and torch.equal(payload["x"], torch.full((2000,), 24.0))
    assert sorted(os.listdir(path.parent)) == ["checkpoint.ckpt"]  # no temporaries left


# ----------------------------------------------------------------- 6. run folders stay unique
def test_labels_sharing_a_folder_are_refused():
    for a, b in (("fs a", "fs_a"), ("FS", "fs"), ("x[k=1]", "x[k=1")):
        with pytest.raises(ConfigError, match="share the run folder") as info:
            _cfg_labels([a, b])
        assert repr(a) in str(info.value) and repr(b) in str(info.value)
    for bad in (".", "..", ".fedsim.lock", "results.csv", "TABLE.TXT"):
        with pytest.raises(ConfigError, match="hidden or reserved|empty"):
            _cfg_labels([bad])


def _cfg_labels(labels):
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["methods"] = [{"label": lab, "rule": "fedavg"} for lab in labels]
    return parse_config(raw)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", ""])
def test_experiment_names_that_leave_the_output_folder_are_refused(name):
    with pytest.raises(ConfigError, match="output.name must be a folder name"):
        _cfg(output={"name": name})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=6, unique=True))
def test_accepted_labels_get_distinct_safe_folders(labels):
    try:
        names = check_run_folders(labels)
    except ConfigError:
        folded = [run_folder_name(lab).casefold() for lab in labels]
        bad = [n for n in folded if not n or n.startswith(".") or n in
               {"results.json", "results.csv", "table.txt", "config.toml", "compression.png", "curves.png"}]
        assert bad or len(set(folded)) < len(folded)  # refused only for a real reason
        return
    folded = [names[lab].casefold() for lab in labels]
    assert len(set(folded)) == len(labels)
    for name in names.values():
        assert name and not name.startswith(".") and "/" not in name and "\0" not in name
        assert len(name.encode("utf-8")) <= 200


def test_long_labels_are_cut_with_a_hash_and_stay_distinct():
    a, b = "m[" + "k=1," * 100 + "x=1]", "m[" + "k=1," * 100 + "x=2]"
    na, nb = run_folder_name(a), run_folder_name(b)
    assert na != nb and len(na) <= 200 and len(nb) <= 200
    assert run_folder_name("fetchsgd[k=50,cols=1000]") == "fetchsgd_k=50,cols=1000"  # short names unchanged


# ----------------------------------------------------------------- 15. non-finite values
@pytest.mark.parametrize("override", ["train.weight_decay=inf", "train.lr=nan", "train.warmup=-inf",
                                      "data.alpha=inf", "rule.momentum=nan", "methods.fedavg.server_lr=inf",
                                      "methods.fedavg.lr=inf"])
def test_non_finite_hyperparameters_are_refused(override, capsys):
    assert main(["config", "--set", override]) == 2
    err = capsys.readouterr().err
    key = override.split("=")[0].split(".")[-1]
    assert key in err and "finite" in err


def test_non_finite_value_set_after_parsing_is_refused():
    cfg = _cfg()
    cfg.train.weight_decay = float("inf")
    with pytest.raises(ConfigError, match="train.weight_decay must be a finite number"):
        cfg.runs()


def test_overflow_inside_rules_ends_those_runs_not_the_experiment(tmp_path, capsys):
    # A finite but huge weight decay overflows in the first round: every run must end as diverged@1,
    # the experiment must finish with its table (it used to abort with exit 2 on the sketch's error).
    cfg = _cfg(("fetchsgd", "true_topk", "local_topk", "fedavg", "uncompressed"),
               train={"weight_decay": 1e300})
    exp = run_experiment(cfg, out_dir=tmp_path, log=_quiet)
    assert [r.status for r in exp.runs] == ["diverged"] * 5
    assert all(r.rounds_done == 0 for r in exp.runs)
    table = (tmp_path / "table.txt").read_text()
    assert table.count("diverged@1") == 5
    for r in exp.runs:
        assert json.loads((tmp_path / run_folder_name(r.label) / "summary.json").read_text())["status"] == "diverged"


@pytest.fixture
def sketching_rule():
    """A user rule that sketches its scaled gradient (a Count Sketch refuses NaN/inf input)."""
    import dataclasses

    from sketchlib import CountSketch

    @dataclasses.dataclass
    class ScaledSketchParams(RuleParams):
        boost: float = knob(1.0, "multiplies the gradient before it is sketched")

    @register_rule
    class ScaledSketchRule(ServerRule):
        name = "scaled_sketch_test"
        Params = ScaledSketchParams

        def __init__(self, params, d, **kw):
            super().__init__(params, d, **kw)
            self.state = None

        def upload_bytes(self):
            return 3 * 256 * self.value_bytes

        def round(self, ctx):  # sketched SGD: the update is the sketch's estimate of the gradient
            s = CountSketch(self.d, 3, 256, seed=0, backend="numpy")
            s.insert((ctx.gradient_sum() * self.params.boost).numpy())
            return ctx.lr * torch.from_numpy(s.estimate_all().astype("float32"))

    yield ScaledSketchRule
    del RULES["scaled_sketch_test"]


def test_sketch_refusing_a_non_finite_value_ends_only_that_run(tmp_path, sketching_rule):
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["output"]["checkpoint_every"] = 0  # the test rule keeps no state to checkpoint
    raw["methods"] = [{"label": "boosted", "rule": "scaled_sketch_test", "boost": 1e300},
                      {"label": "plain", "rule": "scaled_sketch_test", "boost": 1.0}]
    exp = run_experiment(parse_config(raw), out_dir=tmp_path, log=_quiet)
    boosted, plain = exp.runs
    assert (boosted.status, boosted.rounds_done) == ("diverged", 0)
    assert "NaN or infinite value inside the rule" in boosted.message and "round 1" in boosted.message
    assert plain.status == "ok" and plain.rounds_done == 4


# ----------------------------------------------------------------- 16. --resume over damaged files
def _finished_run(tmp_path, **output):
    cfg = _cfg(output=output)
    first = run_experiment(cfg, out_dir=tmp_path, log=_quiet)
    return cfg, first, tmp_path / "fetchsgd"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_rebuilds_a_truncated_metrics_file_from_the_checkpoint(tmp_path, fmt):
    cfg, first, folder = _finished_run(tmp_path, metrics=fmt)
    metrics = folder / f"metrics.{fmt}"
    whole = metrics.read_text()
    metrics.write_text(whole[: len(whole) - 17])  # cut inside the last row
    log = []
    again = run_experiment(cfg, out_dir=tmp_path, resume=True, log=log.append)
    assert metrics.read_text() == whole
    assert again.runs[0].history == first.runs[0].history
    assert any(str(metrics) in m and "continuing from" in m for m in log)
    metrics.write_text(whole.split("\n", 2)[0] + "\n")  # cut at a line boundary: rounds missing
    again = run_experiment(cfg, out_dir=tmp_path, resume=True, log=_quiet)
    assert metrics.read_text() == whole and again.runs[0].history == first.runs[0].history


def test_resume_rebuilds_a_truncated_summary_from_the_checkpoint(tmp_path):
    cfg, first, folder = _finished_run(tmp_path)
    summary = folder / "summary.json"
    whole = json.loads(summary.read_text())
    summary.write_text(summary.read_text()[:40])
    log = []
    again = run_experiment(cfg, out_dir=tmp_path, resume=True, log=log.append)
    rebuilt = json.loads(summary.read_text())
    rebuilt.pop("seconds"), whole.pop("seconds")
    # What ran differs (times, the command line, the round resumed at); the result must not.
    assert rebuilt.pop("provenance")["resumed_at_round"] >= 1 and "provenance" in whole
    whole.pop("provenance")
    assert rebuilt == whole
    assert again.runs[0].history == first.runs[0].history
    assert any(str(summary) in m and "truncated or malformed" in m for m in log)


def test_damaged_files_without_a_checkpoint_are_named(tmp_path, capsys):
    cfg, first, folder = _finished_run(tmp_path, checkpoint_every=0)
    assert not (folder / "checkpoint.ckpt").exists()
    metrics = folder / "metrics.csv"
    whole = metrics.read_text()
    metrics.write_text(whole[:-5])
    argv = ["run", "--set", "output.checkpoint_every=0", "--out", str(tmp_path), "--resume"]
    toml = tmp_path / "c.toml"
    from fedsim.config import dump_toml
    toml.write_text(dump_toml(cfg))
    assert main(argv + ["--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert str(metrics) in err and "Delete the folder" in err and "Traceback" not in err
    metrics.write_text(whole)
    (folder / "summary.json").write_text('{"label": "fets')
    assert main(argv + ["--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "summary.json") in err and "truncated or malformed" in err


# ----------------------------------------------------------------- 17. messages
def test_checkpoint_with_appended_bytes_is_not_called_truncated(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"x": torch.ones(3)}, "a" * 64)
    path.write_bytes(path.read_bytes() + b"junk!")
    with pytest.raises(Exception, match="5 extra bytes after its") as info:
        load_checkpoint(path, "a" * 64)
    assert "truncated" not in str(info.value)


def test_config_folder_is_named_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a TOML file"):
        load_config(tmp_path)

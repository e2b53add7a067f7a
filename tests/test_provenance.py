"""What ran is recorded (provenance), the library logs instead of printing, the CLI's -v/-q, TensorBoard scalars."""
import datetime
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fedsim
from fedsim import ConfigError, Simulation, parse_config, run_experiment
from fedsim._provenance import collect, device_name
from fedsim.report import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"dataset": "digits", "num_clients": 20},
    "train": {"rounds": 3, "clients_per_round": 3, "lr": 0.1, "eval_every": 1, "threads": 1},
    "rule": {"name": "fetchsgd", "k": 20, "rows": 3, "cols": 400, "sketch_backend": "numpy"},
    "output": {"progress": False, "checkpoint_every": 0, "plot": False},
    "methods": [{"label": "fetch", "rule": "fetchsgd"}, {"label": "unc", "rule": "uncompressed"}],
}
TINY_TOML = """
[data]
num_clients = 20
[train]
rounds = 2
clients_per_round = 3
eval_every = 1
threads = 1
[rule]
name = "uncompressed"
[output]
checkpoint_every = 0
plot = false
"""


def _git_head():
    """HEAD of the checkout holding the tests, or None outside one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _time(text):
    return datetime.datetime.fromisoformat(text)


def test_library_logs_and_never_prints_and_every_run_records_what_ran(tmp_path, capsys, caplog, monkeypatch):
    for name in ("fedsim", "sketchlib"):  # drop handlers an in-process `fedsim` command may have configured
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        exp = run_experiment(parse_config(TINY), out_dir=tmp_path)
    after = datetime.datetime.now(datetime.timezone.utc)
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")  # only the CLI prints
    assert any(r.name == "fedsim" and f"results in {tmp_path}" in r.getMessage() for r in caplog.records)

    head = _git_head()
    for run in ("fetch", "unc"):
        prov = json.loads((tmp_path / run / "provenance.json").read_text())
        assert json.loads((tmp_path / run / "summary.json").read_text())["provenance"] == prov
        assert prov["packages"]["numpy"] == np.__version__ and prov["packages"]["torch"] == torch.__version__
        assert prov["python"] == ".".join(map(str, sys.version_info[:3]))
        assert prov["device"] == "cpu" and prov["device_name"] == device_name("cpu")
        assert prov["cpu_count"] == os.cpu_count() and prov["command"] == sys.argv
        assert prov["git_commit"] == head
        assert before <= _time(prov["started"]) <= _time(prov["ended"]) <= after
    whole = json.loads((tmp_path / "provenance.json").read_text())
    assert whole == exp.provenance and _time(whole["started"]) <= _time(whole["ended"])
    assert (tmp_path / "table.txt").read_text().splitlines()[0] == f"device: {device_name('cpu')} (cpu)"


def test_collect_names_the_cuda_device_and_versions():
    rec = collect("cpu", ["fedsim", "run"])
    assert rec["command"] == ["fedsim", "run"] and rec["device_name"].startswith("CPU")
    assert rec["cuda_runtime"] == torch.version.cuda
    if torch.cuda.is_available():  # on a GPU machine the record names the GPU and the driver
        gpu = collect("cuda")
        assert gpu["device_name"] == torch.cuda.get_device_name(0) and gpu["cuda_driver"] > 0


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "fedsim", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_prints_the_table_and_quiet_silences_messages(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    loud = _cli(["--config", str(cfg), "--out", "a", "--no-progress"], tmp_path)
    quiet = _cli(["run", "-q", "--config", str(cfg), "--out", "b"], tmp_path)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    table = (tmp_path / "a" / "table.txt").read_text()
    assert loud.stdout == table and quiet.stdout == (tmp_path / "b" / "table.txt").read_text()
    assert table.startswith("device: ") and "uncompressed" in table
    assert "fedsim: results in a/" in loud.stderr
    assert quiet.stderr == ""  # no messages, no progress bar
    prov = json.loads((tmp_path / "b" / "uncompressed" / "provenance.json").read_text())
    assert prov["command"][1:] == ["run", "-q", "--config", str(cfg), "--out", "b"]


def test_tensorboard_scalars_match_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = dict(TINY, output=dict(TINY["output"], tensorboard=True))
    run_experiment(parse_config(raw), out_dir=tmp_path, only=["fetch"], log=lambda m: None)
    rows = read_metrics(tmp_path / "fetch")
    acc = EventAccumulator(str(tmp_path / "fetch" / "tensorboard"))
    acc.Reload()
    for tag, key in (("accuracy/test", "test_acc"), ("loss/train", "train_loss"), ("bytes/up", "up_bytes"),
                     ("compression/overall", "compression")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["round"] for r in rows]
        assert np.allclose([e.value for e in events], [r[key] for r in rows], rtol=1e-6)
    assert rows[-1]["compression"] > 1


def test_missing_tensorboard_names_what_to_install(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorboard"] = None  # as if it were not installed
        from fedsim import Simulation, parse_config
        raw = {dict(TINY, methods=[], output=dict(TINY["output"], tensorboard=True))!r}
        (spec,) = parse_config(raw).runs()
        Simulation(spec, out_dir={str(tmp_path / "run")!r}).run()
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr and "pip install 'sketchgrad[tensorboard]'" in proc.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()  # it stopped before the first round


def test_a_foreign_adapters_package_stops_fedsim_without_being_imported(tmp_path):
    fake = tmp_path / "site" / "adapters"
    fake.mkdir(parents=True)
    ran = tmp_path / "foreign_code_ran"
    (fake / "__init__.py").write_text(f"open({str(ran)!r}, 'w').close()\n__version__ = '1.0'\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO)]))
    code = "import fedsim"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedsim._names.ForeignPackageError:") and str(fake / "__init__.py") in last
    assert "own virtual environment" in last and "pip uninstall adapters" in last
    assert not ran.exists()  # the other package was never imported
    # the same path with our package first imports fine
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path / "site")])
    ok = subprocess.run([sys.executable, "-c", "import fedsim, adapters; print(adapters.__distribution__)"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == "sketchgrad", ok.stderr

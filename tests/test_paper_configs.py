"""Paper configs mean what they say: no silent synthetic data, and synthetic runs say so everywhere."""
import csv
import json
from pathlib import Path

import pytest

from fedsim import ConfigError, load_config, parse_config, run_experiment
from fedsim.data import synthetic_cifar
from fedsim.simulator import _fallback_name, load_run_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "fedsim" / "configs"
PAPER = sorted(CONFIGS.glob("paper_*.toml"))


def test_there_are_paper_configs_for_cifar10_cifar100_and_femnist():
    assert {p.name for p in PAPER} >= {"paper_cifar10.toml", "paper_cifar100.toml", "paper_femnist.toml"}


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_configs_refuse_to_run_without_the_real_files(path, tmp_path):
    cfg = load_config(path, [f"data.root={str(tmp_path)!r}"])
    assert cfg.data.fallback is None
    with pytest.raises(FileNotFoundError, match='data.fallback = "synthetic"'):
        load_run_dataset(cfg.runs()[0].data, 0)


def test_fallback_synthetic_names_the_stand_in_or_says_there_is_none():
    cfg = load_config(CONFIGS / "paper_cifar10.toml", ["data.fallback=synthetic"])
    assert _fallback_name(cfg.data) == "synthetic_cifar10"
    cfg = load_config(CONFIGS / "paper_cifar100.toml", ["data.fallback=synthetic"])
    assert _fallback_name(cfg.data) == "synthetic_cifar100"
    cfg = load_config(CONFIGS / "paper_femnist.toml", ["data.fallback=synthetic"])
    with pytest.raises(ConfigError, match="has no synthetic stand-in"):
        _fallback_name(cfg.data)
    with pytest.raises(ConfigError, match="data.fallback must be 'synthetic' or a dataset name"):
        load_config(CONFIGS / "paper_cifar10.toml", ["data.fallback=fake_data"])


def _tiny(dataset="synthetic_cifar10"):
    return parse_config({
        "data": {"dataset": dataset, "num_clients": 6},
        "model": {"name": "mlp"},
        "train": {"rounds": 2, "clients_per_round": 2, "lr": 0.05, "eval_every": 1, "threads": 1},
        "rule": {"name": "uncompressed"},
        "output": {"progress": False, "checkpoint_every": 0, "plot": True},
    })


def _png_description(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.text.get("Description", "")


def test_every_output_of_a_synthetic_run_says_synthetic(tmp_path, capsys):
    data = synthetic_cifar(48, 16, num_classes=10, seed=0)
    exp = run_experiment(_tiny(), out_dir=tmp_path / "syn", dataset=data, log=lambda m: None)
    (r,) = exp.runs
    assert r.synthetic and r.dataset == "synthetic_cifar10"
    out = tmp_path / "syn"
    assert (out / "table.txt").read_text().startswith("SYNTHETIC DATA (synthetic_cifar10)")
    from fedsim.report import format_table
    assert format_table(exp.runs, exp.provenance).startswith("SYNTHETIC DATA")   # what the CLI prints
    (row,) = list(csv.DictReader(open(out / "results.csv")))
    assert row["synthetic"] == "True" and row["dataset"] == "synthetic_cifar10"
    assert json.loads((out / "results.json").read_text())[0]["synthetic"] is True
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    assert summary["synthetic"] is True and summary["dataset"] == "synthetic_cifar10"
    for png in ("compression.png", "curves.png"):
        assert "SYNTHETIC DATA" in _png_description(out / png)


def test_a_real_data_run_carries_no_synthetic_mark(tmp_path):
    exp = run_experiment(_tiny("digits"), out_dir=tmp_path / "real", log=lambda m: None)
    (r,) = exp.runs
    assert not r.synthetic and r.dataset == "digits"
    out = tmp_path / "real"
    assert "SYNTHETIC" not in (out / "table.txt").read_text()
    assert _png_description(out / "compression.png") == ""


def _methods(path):
    import tomllib
    return tomllib.loads(path.read_text())["methods"]


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_each_method_has_its_own_lr_marked_tuned_or_untuned_and_the_sweeps_are_there(path):
    text = path.read_text()
    blocks = text.split("[[methods]]")[1:]
    for block in blocks:
        lr_lines = [line for line in block.splitlines() if line.startswith("lr =")]
        # "UNTUNED" until someone runs the documented sweep, then "tuned <date>: ..."
        assert len(lr_lines) == 1 and "# " in lr_lines[0] and "tuned" in lr_lines[0].lower(), block
    cfg = load_config(path)
    groups = {}
    for spec in cfg.runs():
        groups.setdefault(spec.group, []).append(spec)
    assert {"uncompressed", "true_topk", "fetchsgd", "local_topk", "fedavg", "fedavg_mom"} <= set(groups)
    assert len({(s.rule.k, s.rule.cols) for s in groups["fetchsgd"]}) >= 4
    assert len({s.rule.k for s in groups["local_topk"]}) >= 3
    for name, momentum in (("fedavg", False), ("fedavg_mom", True)):
        assert len({s.rule.local_epochs for s in groups[name]}) >= 3
        assert all(s.rule.server_momentum is momentum for s in groups[name])
        # more local epochs, proportionally fewer rounds: FedAvg's compression points
        assert len({s.rule.local_epochs * s.train.rounds for s in groups[name]}) == 1
    assert all(s.model.name == "resnet9" for s in cfg.runs())


def test_the_models_named_in_the_configs_have_the_stated_sizes():
    from fedsim.models import build_model, num_parameters

    for path, shape, classes, d in ((CONFIGS / "paper_cifar10.toml", (3, 32, 32), 10, 6_568_640),
                                    (CONFIGS / "paper_cifar100.toml", (3, 32, 32), 100, 6_614_720),
                                    (CONFIGS / "paper_femnist.toml", (1, 28, 28), 62, 6_594_112)):
        assert f"{d:,}" in path.read_text()
        assert num_parameters(build_model(load_config(path).model.name, shape, classes)) == d


def test_cifar100_partition_is_10000_single_class_clients_of_5():
    import numpy as np

    from fedsim.data import partition

    cfg = load_config(CONFIGS / "paper_cifar100.toml").data
    labels = np.repeat(np.arange(100), 500)
    parts = partition(labels, cfg.num_clients, cfg.partition, seed=0, classes_per_client=cfg.classes_per_client,
                      samples_per_client=cfg.samples_per_client)
    assert len(parts) == 10_000
    assert all(len(p) == 5 and len(set(labels[p].tolist())) == 1 for p in parts)


def test_the_documented_lr_sweep_commands_parse_into_one_lr_sweep_each():
    import shlex

    from fedsim.cli import build_parser, config_from_args

    path = CONFIGS / "paper_cifar10.toml"
    header = path.read_text().split("[data]")[0]
    joined = "\n".join(line[1:].strip() for line in header.splitlines()).replace("\\\n", " ")
    commands = [line for line in joined.splitlines() if line.startswith("fedsim run") and "--name lr_" in line]
    assert len(commands) == 6  # one per method group but fetchsgd_r1 (tuned like fetchsgd)
    for cmd in commands:
        args = build_parser().parse_args(shlex.split(cmd.replace("$C", str(path)))[1:])
        runs = config_from_args(args).runs([args.only])
        assert len(runs) == 5 and len({r.train.lr for r in runs}) == 5, cmd

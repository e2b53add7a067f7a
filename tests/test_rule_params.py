"""Rule parameters and the registry: per-rule validation, [rule] shared defaults, a rule added in one file."""
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedsim import ConfigError, FedsimError, Simulation, parse_config
from fedsim.cli import main
from fedsim.config import apply_overrides, dump_toml, load_config
from fedsim.config import tomllib  # tomli on Python 3.10
from fedsim.rules import (RULES, FetchSGDParams, MomentumParams, ServerRule, TrueTopKParams, knob,
                          knobs_markdown, make_rule, register_rule, rule_params)

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"dataset": "digits", "num_clients": 30},
    "train": {"rounds": 3, "clients_per_round": 4, "lr": 0.1, "eval_every": 3, "threads": 1},
    "rule": {"name": "fetchsgd", "k": 50, "rows": 3, "cols": 500, "sketch_backend": "numpy"},
    "output": {"progress": False, "checkpoint_every": 0, "plot": False},
}


def tiny(rule=None, methods=None):
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["rule"].update(rule or {})
    if methods is not None:
        raw["methods"] = methods
    return raw


def test_params_validate_types_and_values_on_construction():
    assert FetchSGDParams(k=7, cols=400).k == 7
    assert TrueTopKParams(momentum=0).momentum == 0.0 and isinstance(TrueTopKParams(momentum=0).momentum, float)
    for kw, match in [({"k": 0}, "rule.k must be positive"), ({"k": "many"}, "rule.k must be int"),
                      ({"momentum": 1.0}, r"rule.momentum must be in \[0, 1\)"),
                      ({"zeroing": "all"}, "rule.zeroing must be one of"),
                      ({"sketch_hash_version": 2, "cols": 1001}, "divisible by 4"),
                      ({"lr_placement": "before"}, "rule.lr_placement")]:
        with pytest.raises(ConfigError, match=match):
            FetchSGDParams(**kw)


def test_make_rule_builds_from_params_and_checks_d_once_for_every_topk_rule():
    rule = make_rule(rule_params("fetchsgd", k=5, rows=2, cols=64, sketch_backend="numpy"), 100)
    assert rule.name == "fetchsgd" and rule.params.k == 5 and rule.d == 100
    assert rule.upload_bytes() == 2 * 64 * 4
    for name in ("fetchsgd", "true_topk", "local_topk"):
        with pytest.raises(ConfigError, match="rule.k = 101 exceeds the model's d = 100"):
            make_rule(rule_params(name, k=101), 100)
    with pytest.raises(ConfigError, match="needs FetchSGDParams"):
        RULES["fetchsgd"](TrueTopKParams(), 100)
    with pytest.raises(ConfigError, match="unknown rule 'nope'"):
        rule_params("nope")
    with pytest.raises(ConfigError, match="rule 'uncompressed' has no knob 'k'.*true_topk"):
        rule_params("uncompressed", k=3)
    with pytest.raises(ConfigError, match="RuleParams"):
        make_rule({"name": "fetchsgd"}, 10)


def test_rule_section_keys_are_shared_defaults_for_the_rules_that_have_them():
    cfg = parse_config(tiny(rule={"server_lr": 2.0}, methods=[
        {"label": "f", "rule": "fetchsgd"}, {"label": "a", "rule": "fedavg", "local_epochs": 2},
        {"label": "u", "rule": "uncompressed", "momentum": 0.5}]))
    f, a, u = cfg.runs()
    assert (f.rule.k, f.rule.cols, f.rule.rows) == (50, 500, 3)
    assert (a.rule.server_lr, a.rule.local_epochs) == (2.0, 2) and not hasattr(a.rule, "k")
    assert u.rule.to_dict() == {"name": "uncompressed", "momentum": 0.5}
    # a shared default is validated by every rule that has it, even if no method uses that rule
    with pytest.raises(ConfigError, match="rule.server_lr must be positive"):
        parse_config(tiny(rule={"server_lr": -1.0}))
    with pytest.raises(ConfigError, match="unknown key rule.colz; valid keys: name, cols"):
        parse_config(tiny(rule={"colz": 1}))


def test_a_method_key_of_another_rule_is_an_error_naming_the_rule():
    with pytest.raises(ConfigError, match=r"methods\[0\]\.server_lr: rule 'fetchsgd' has no knob 'server_lr' "
                                          r"\(it belongs to fedavg\); fetchsgd's knobs: momentum, k"):
        parse_config(tiny(methods=[{"rule": "fetchsgd", "server_lr": [1.0, 2.0]}]))
    with pytest.raises(ConfigError, match=r"unknown key methods\[0\]\.wat; valid keys: momentum, k"):
        parse_config(tiny(methods=[{"rule": "true_topk", "wat": 1}]))
    # a method without `rule` takes [rule].name, and its keys are checked against that rule
    with pytest.raises(ConfigError, match="rule 'fetchsgd' has no knob 'local_epochs'"):
        parse_config(tiny(methods=[{"label": "x", "local_epochs": 2}]))
    raw = tiny(methods=[{"label": "a", "rule": "fedavg"}])
    with pytest.raises(ConfigError, match="rule 'fedavg' has no knob 'k'"):
        parse_config(apply_overrides(raw, ["methods.a.k=3"]))


def test_today_s_configs_and_overrides_still_load():
    for path in sorted((REPO / "fedsim" / "configs").glob("*.toml")):
        specs = load_config(path, ["rule.k=20", "rule.cols=400"]).runs()
        assert specs and all(s.rule.k == 20 for s in specs if hasattr(s.rule, "k"))
        # `fedsim config` output (and the experiment's config.toml) parses back to the same runs
        again = parse_config(tomllib.loads(dump_toml(load_config(path, ["rule.k=20", "rule.cols=400"]))))
        assert [s.config_hash() for s in again.runs()] == [s.config_hash() for s in specs]


@pytest.fixture
def scaled_rule():
    """A rule defined in one place (as a new rule file would): Params, class, register_rule."""

    @dataclasses.dataclass
    class ScaledSGDParams(MomentumParams):
        scale: float = knob(1.0, "multiplies the summed gradient")

        def validate(self):
            super().validate()
            if self.scale <= 0:
                raise ConfigError(f"rule.scale must be positive, got {self.scale}")

    @register_rule
    class ScaledSGD(ServerRule):
        name = "scaled_sgd_test"
        Params = ScaledSGDParams

        def __init__(self, params, d, **kw):
            super().__init__(params, d, **kw)
            self.state = None

        def upload_bytes(self):
            return self.d * self.value_bytes

        def round(self, ctx):
            return ctx.allreduce_(ctx.gradient_sum()) * (ctx.lr * self.params.scale)

    yield ScaledSGD
    del RULES["scaled_sgd_test"]


def test_a_rule_registered_in_one_place_is_configurable_listed_and_runs(scaled_rule, capsys):
    assert "| `scaled_sgd_test` | `scale` | float | `1.0` | multiplies the summed gradient |" in knobs_markdown()
    assert main(["list"]) == 0 and "scaled_sgd_test" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="rule.scale must be positive"):
        parse_config(tiny(methods=[{"rule": "scaled_sgd_test", "scale": -1.0}]))
    # scale 2 at lr 0.1 takes the step of plain SGD (uncompressed, no momentum) at lr 0.2
    (mine,) = parse_config(tiny(rule={"name": "scaled_sgd_test", "scale": 2.0})).runs()
    (ref,) = parse_config(dict(tiny(rule={"name": "uncompressed", "momentum": 0.0}),
                               train=dict(TINY["train"], lr=0.2))).runs()
    a, b = Simulation(mine), Simulation(ref)
    for _ in range(2):
        a.step(), b.step()
    torch.testing.assert_close(a.params, b.params, rtol=1e-5, atol=1e-7)
    assert not torch.equal(a.params, Simulation(mine).params)


def test_register_rule_refuses_clashes(scaled_rule):
    @dataclasses.dataclass
    class BadParams(MomentumParams):
        k: float = knob(1.0, "a k of another type than the top-k rules'")

    class Bad(ServerRule):
        name = "bad_test"
        Params = BadParams

    with pytest.raises(ConfigError, match="knob 'k' has another type"):
        register_rule(Bad)
    Bad.name = "fetchsgd"
    with pytest.raises(ConfigError, match="already registered"):
        register_rule(Bad)
    assert "bad_test" not in RULES


def test_readme_table_is_the_registry_s():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- rule-knobs:[^\n]*-->\n(.*?)\n<!-- /rule-knobs -->", text, re.S)
    assert block is not None and block.group(1) == knobs_markdown()


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fedsim", "run", "--rounds", "1", "--no-plot", "--no-progress",
                           "--out", "out", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--dataset", "nosuch", "--rule", "uncompressed"], "unknown dataset 'nosuch'"),
    (["--dataset", "mnist", "--set", "data.root='empty'", "--rule", "uncompressed"],
     "mnist: expected the files"),
    (["--model", "nosuch", "--rule", "uncompressed"], "unknown model 'nosuch'"),
    (["--rule", "fetchsgd", "--set", "rule.k=10000000"], "rule.k = 10000000 exceeds the model's d"),
    (["--set", "methods.fedavg.k=3"], "rule 'fedavg' has no knob 'k'"),
])
def test_cli_prints_one_clean_line_for_bad_inputs(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    done = _cli(args, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_every_error_class_is_a_fedsim_error():
    import fedsim.errors as errors
    from fedsim.distributed import RankFailure, RankMismatch
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), FedsimError)
    assert issubclass(RankMismatch, RankFailure) and issubclass(RankFailure, RuntimeError)
    assert issubclass(errors.DataFileMissing, FileNotFoundError) and issubclass(errors.ModelError, ValueError)

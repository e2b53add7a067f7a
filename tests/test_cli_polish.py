"""The CLI's surface (--version, help, choices, `fedsim list`, config validation) and the config's TOML round trip."""
import dataclasses
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fedsim import config as C
from fedsim._fields import field_type
from fedsim.errors import ConfigError
from fedsim.layout import check_run_folders
from fedsim.cli import build_parser, main
from fedsim.clients import ENGINES
from fedsim.data import DATASETS, SCHEMES
from fedsim.models import MODELS
from fedsim._augment import AUGMENTATIONS
from fedsim.accounting import ACCOUNTINGS
from fedsim.rules import RULES, all_knobs, rules_with_knob


# ----------------------------------------------------------------------------- TOML round trip
# Valid values of the keys whose value is one of a few names; every other key gets a value
# drawn from its declared type (str, int, float, bool, each maybe None).
_CHOICES = {
    ("data", "dataset"): DATASETS, ("data", "fallback"): (None, "synthetic") + tuple(DATASETS),
    ("data", "partition"): SCHEMES, ("data", "augment"): AUGMENTATIONS,
    ("model", "name"): MODELS, ("rule", "name"): tuple(RULES), ("rule", "sketch"): ("count", "identity"),
    ("rule", "zeroing"): ("buckets", "subtract"), ("rule", "lr_placement"): ("inside", "after"),
    ("train", "accounting"): ACCOUNTINGS, ("train", "sampling"): C.SAMPLINGS,
    ("train", "weight_decay_placement"): C.WD_PLACEMENTS,
    ("rule", "sketch_backend"): ("auto", "numpy", "numba", "cupy"), ("rule", "sketch_hash_version"): (None, 1),
    ("train", "schedule"): C.SCHEDULES, ("train", "weighting"): C.WEIGHTINGS,
    ("train", "device"): ("cpu", "cuda", "cuda:3"), ("train", "engine"): tuple(ENGINES),
    ("output", "metrics"): C.METRIC_FORMATS,
}
# Any Unicode but lone surrogates, with emoji and other non-BMP characters drawn often.
_text = st.text(alphabet=st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from("🚀😀𝔘🀄\U0010FFFD")),
                min_size=1, max_size=12)
# A group "a[k=1]" may clash with a sweep label; a label's folder may not be hidden ('.', '..', '.x').
_label = _text.filter(lambda s: "[" not in s and "]" not in s and not s.startswith("."))
_float = st.floats(min_value=1e-12, max_value=0.999, allow_subnormal=False)  # in range for every float key


def _value(section, cls, key):
    """A strategy of valid values of one config key."""
    if (section, key) in _CHOICES:
        return st.sampled_from(_CHOICES[section, key])
    base, optional = field_type(cls, key)
    if key == "name" and section == "output":
        strat = _text.filter(lambda s: "/" not in s and "\\" not in s and s not in (".", ".."))
    else:
        strat = {bool: st.booleans(), int: st.integers(1, 2**40), float: _float, str: _text}[base]
    return st.one_of(st.none(), strat) if optional else strat


def _params_class(key):
    """A rule parameters class that has knob ``key`` (knobs of one name have one type everywhere)."""
    return RULES[rules_with_knob(key)[0]].Params


@st.composite
def _raw_config(draw):
    raw = {}
    for name, cls in C.SECTIONS.items():
        if name == "rule":  # the rule's name and shared knob defaults
            keys = draw(st.lists(st.sampled_from(all_knobs()), unique=True))
            raw[name] = {"name": draw(st.sampled_from(tuple(RULES)))}
            raw[name].update({k: draw(_value(name, _params_class(k), k)) for k in keys})
        else:
            keys = draw(st.lists(st.sampled_from([f.name for f in dataclasses.fields(cls)]), unique=True))
            raw[name] = {k: draw(_value(name, cls, k)) for k in keys}
            if name == "data" and any(raw[name].get(k) is not None for k in C.TEXT_KEYS):
                raw[name]["dataset"] = "shakespeare"   # the text keys belong to the text dataset
                if raw[name].get("max_chars_per_client") is not None:   # a client needs one window
                    raw[name]["max_chars_per_client"] += raw[name].get("seq_len") or 80
        raw[name] = {k: v for k, v in raw[name].items() if v is not None}  # TOML has no null: absent = default
    methods = []
    for label in draw(st.lists(_label, unique=True, max_size=4)):
        entry = {"label": label, "rule": draw(st.sampled_from(tuple(RULES)))}
        rule_keys = RULES[entry["rule"]].Params.knobs()
        width = draw(st.integers(0, 3))  # 0: no sweep
        if width:  # distinct rounds keep the sweep's run labels distinct
            entry["rounds"] = draw(st.lists(st.integers(1, 10**6), min_size=width, max_size=width, unique=True))
        for key in draw(st.lists(st.sampled_from(rule_keys + ["lr"]), unique=True, max_size=3)):
            cls = C.TrainConfig if key == "lr" else RULES[entry["rule"]].Params
            strat = _value("rule", cls, key).filter(lambda v: v is not None)
            sweep = width and draw(st.booleans())
            entry[key] = draw(st.lists(strat, min_size=width, max_size=width)) if sweep else draw(strat)
        methods.append(entry)
    if methods:
        raw["methods"] = methods
        try:  # labels whose folders would collide are refused by design: not this test's subject
            check_run_folders([m["label"] for m in methods])
        except ConfigError:
            assume(False)
    return raw


def _runs(cfg):
    """Everything that defines the runs of a config (labels, groups, every section)."""
    return [(s.label, s.group, s.to_dict(), dataclasses.asdict(s.output)) for s in cfg.runs()]


@given(_raw_config())
def test_a_whole_config_round_trips_through_toml(raw):
    cfg = C.parse_config(raw)
    text = C.dump_toml(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.toml"
        path.write_bytes(text.encode("utf-8"))
        again = C.load_config(path)
    assert again == cfg
    assert _runs(again) == _runs(cfg)
    assert C.dump_toml(again) == text


def test_emoji_label_round_trips():
    cfg = C.parse_config({"methods": [{"label": "fetch 🚀", "rule": "fetchsgd", "k": [10, 20]}]})
    text = C.dump_toml(cfg)
    assert "🚀" in text and "\\ud83d" not in text.lower()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.toml").write_bytes(text.encode())
        assert [s.label for s in C.load_config(Path(tmp) / "c.toml").runs()] == ["fetch 🚀[k=10]", "fetch 🚀[k=20]"]


# ----------------------------------------------------------------------------- command line
@pytest.fixture
def cli(capsys):
    """Run ``fedsim`` in this process: returns (exit status, stdout, stderr); logging is restored after."""
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers))
             for name in ("fedsim", "sketchlib")}

    def run(*args):
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    for name, (level, handlers) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).handlers[:] = handlers


def test_version_help_and_choices_come_from_the_registries(cli):
    from sketchlib import __version__

    assert cli("--version")[:2] == (0, f"fedsim (sketchgrad) {__version__}\n")
    assert "bare `fedsim` runs `fedsim run`" in build_parser().format_help()
    code, out, _ = cli("run", "--help")
    run_help = " ".join(out.split())  # unwrapped
    assert code == 0
    for names in (DATASETS, MODELS, tuple(RULES), tuple(ENGINES)):
        assert "one of: " + ", ".join(names) in run_help


def test_config_and_run_refuse_unknown_dataset_and_model_alike(tmp_path, cli):
    for flag, value, key in (("--dataset", "mnistt", "data.dataset"), ("--model", "mlpp", "model.name")):
        outs = [cli(cmd, flag, value, "--out", str(tmp_path / "never")) for cmd in ("config", "run")]
        for code, out, err in outs:
            assert code == 2 and out == ""
            assert f"{key}: unknown" in err and repr(value) in err
        assert outs[0][2] == outs[1][2]
    assert not (tmp_path / "never").exists()


def test_list_shows_every_dataset_model_and_rule_knob(cli):
    from fedsim.cli import rule_knobs

    code, text, _ = cli("list")
    assert code == 0
    for name in (*DATASETS, *MODELS, *SCHEMES, *ENGINES):
        assert name in text
    knobs = rule_knobs()
    assert list(knobs) == list(RULES)
    for rule, entries in knobs.items():
        assert entries and f"\n  {rule}\n" in text
        (spec,) = C.parse_config({"rule": {"name": rule}}).runs()  # what a run of this rule gets by default
        for key, default, help_ in entries:
            assert default == getattr(spec.rule, key) and help_  # the real default; every knob explained
            assert f"    {key} = " in text
    assert {k for k, _, _ in knobs["fetchsgd"]} >= {"k", "rows", "cols", "momentum"}
    assert {k for k, _, _ in knobs["fedavg"]} >= {"local_epochs", "server_lr"}


# ----------------------------------------------------------------------------- plots
def _result(label, group, compression, acc, status="ok"):
    from fedsim.simulator import RunResult

    history = [{"round": t, "test_acc": acc * t / 4, "total_up": 1000 * t, "total_down": 1000 * t}
               for t in range(1, 5)]
    return RunResult(label, group, group, status, "", 4, acc, 1.0, int(1e6 / compression), int(1e6 / compression),
                     10**6, 10**6, 1.0, 100, "h", history)


def test_plots_label_points_and_style_runs_by_method_and_level(tmp_path):
    from fedsim.report import _sweep_point, _styles, plot_experiment

    runs = [_result("unc", "unc", 1.0, 0.9)]
    runs += [_result(f"fetch[k={k},cols={20 * k}]", "fetch", 1000 / k, 0.8 - k / 1000) for k in (50, 100, 200)]
    runs += [_result(f"fedavg[local_epochs={e}]", "fedavg", e, 0.7) for e in (2, 5)]
    runs.append(_result("fedavg[local_epochs=10]", "fedavg", 10, float("nan"), status="diverged"))
    assert [_sweep_point(r) for r in runs[:3]] == ["", "k=50,cols=1000", "k=100,cols=2000"]
    styles = _styles(runs)
    colours = {r.group: set() for r in runs}
    for r, s in zip(runs, styles):
        colours[r.group].add(s["color"])
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == 3
    assert len({str(s["ls"]) for s in styles[1:4]}) == 3  # one line style per level of a method
    comp, curves = plot_experiment(runs, tmp_path)
    assert comp.stat().st_size > 10_000 and curves.stat().st_size > 10_000

"""Experiment configuration: dataclasses, TOML loading, overrides, validation, hashing.

A config file has the sections ``[data]``, ``[model]``, ``[train]``, ``[rule]``,
``[output]`` and an optional list ``[[methods]]``.  Each method names a server
rule and overrides ``[rule]`` keys (and ``rounds``/``lr``); a key given as a list
is a sweep (all list keys of one method are zipped), so one method can run at
several compression levels.  Without ``[[methods]]`` the file describes one run
of ``[rule]``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ._fields import check as _check
from ._fields import coerce_field as _coerce
from .errors import ConfigError
from .layout import check_run_folders

__all__ = [
    "Config", "DataConfig", "ModelConfig", "TrainConfig", "RuleSection", "OutputConfig", "RunSpec",
    "load_config", "parse_config", "apply_overrides", "default_config_path", "dump_toml",
]

SCHEDULES = ("triangular", "constant", "cosine")
WEIGHTINGS = ("samples", "uniform")
WD_PLACEMENTS = ("aggregate", "client")
SAMPLINGS = ("random", "epoch")
METRIC_FORMATS = ("csv", "jsonl")
TEXT_KEYS = ("seq_len", "max_chars_per_client", "min_chars_per_client", "max_test_sequences")


@dataclass
class DataConfig:
    """Dataset and how it is split over clients."""

    dataset: str = "digits"
    root: typing.Optional[str] = None
    # Used, with a warning, when the dataset's files are missing: "synthetic" (the dataset's
    # synthetic stand-in, e.g. synthetic_cifar10) or a dataset name. None: missing files stop
    # the run. Every output of a run on synthetic data says "synthetic".
    fallback: typing.Optional[str] = None
    partition: str = "pathological"
    num_clients: int = 100
    alpha: float = 0.5
    classes_per_client: int = 1
    samples_per_client: typing.Optional[int] = None
    batch_size: typing.Optional[int] = None  # a client's batch per round; None: all its samples
    augment: str = "none"  # "crop_flip": random crop (4-pixel zero padding) + horizontal flip, on the device
    # Text (dataset "shakespeare"; None: the loader's default). See fedsim/data/_shakespeare.py.
    seq_len: typing.Optional[int] = None  # window length L (default 80)
    max_chars_per_client: typing.Optional[int] = None  # cut big speakers into clients of <= this
    min_chars_per_client: typing.Optional[int] = None  # drop speakers with fewer characters
    max_test_sequences: typing.Optional[int] = None  # evenly spaced subset of the test windows

    def loader_options(self):
        """Keyword options of ``load_dataset`` for this dataset (the text keys that are set)."""
        if self.dataset != "shakespeare":
            return {}
        return {k: getattr(self, k) for k in TEXT_KEYS if getattr(self, k) is not None}


@dataclass
class ModelConfig:
    """Model architecture (see ``fedsim.models.build_model``)."""

    name: str = "mlp"


@dataclass
class TrainConfig:
    """Rounds, participation, optimisation and where to compute."""

    rounds: int = 100
    clients_per_round: int = 10
    lr: float = 0.1
    schedule: str = "triangular"
    warmup: float = 0.2  # fraction of rounds to the peak (triangular, cosine)
    weight_decay: float = 5e-4
    weighting: str = "samples"
    seed: int = 0
    device: str = "cpu"
    engine: str = "loop"
    max_clients_per_chunk: typing.Optional[int] = None
    memory_budget_mb: typing.Optional[float] = None
    eval_every: int = 10
    threads: typing.Optional[int] = None  # torch CPU threads; None leaves torch's default
    accounting: str = "fedsim"  # "reference": 4 B per changed weight / top-k value, indices free
    sampling: str = "random"  # "epoch": every client once per epoch (seeded permutation per epoch)
    weight_decay_placement: str = "aggregate"  # "client": wd/W on each client's gradient (reference code)
    clip_norm: typing.Optional[float] = None  # clip each client's gradient (FedAvg: each local step) to this L2 norm


@dataclass
class RuleSection:
    """The ``[rule]`` section: the single run's rule name and knob defaults shared by every method.

    A key of ``values`` applies to every rule that has a knob of that name and
    is ignored by the others (``[rule] k = 50`` sets k for fetchsgd, true_topk
    and local_topk, not for fedavg); a key that no registered rule knows is an
    error.  A method's own keys must be knobs of its rule.

    Parameters
    ----------
    name : str, default "fetchsgd"
        The rule of a config without ``[[methods]]`` (and of methods that name none).
    values : dict
        Knob name -> value, as given in the file (defaults come from each rule's ``Params``).
    """

    name: str = "fetchsgd"
    values: dict = field(default_factory=dict)

    def params_for(self, rule, overrides=(), where="rule"):
        """The validated parameters of ``rule``: its defaults, then these shared values, then ``overrides``.

        Parameters
        ----------
        rule : str
            A registered rule name.
        overrides : mapping, optional
            The method's own knob values (each must be a knob of ``rule``).
        where : str
            How messages name the source of ``overrides`` (e.g. ``methods.fedavg``).

        Returns
        -------
        fedsim.rules.RuleParams

        Raises
        ------
        ConfigError
            Unknown rule, a knob ``rule`` does not have, a bad type or value.
        """
        from .rules import RULES, rule_params
        if rule not in RULES:
            raise ConfigError(f"unknown rule {rule!r}; choose one of {sorted(RULES)}")
        cls = RULES[rule].Params
        knobs = {k: v for k, v in self.values.items() if k in cls.knobs()}
        for key, value in dict(overrides).items():
            knobs[key] = _coerce_rule_key(rule, key, value, where)
        return rule_params(rule, **knobs)


@dataclass
class OutputConfig:
    """Where and how results are written."""

    dir: str = "runs"
    name: str = "default"
    checkpoint_every: int = 50
    metrics: str = "csv"
    plot: bool = True
    progress: bool = True
    tensorboard: bool = False  # per-round scalars in each run's tensorboard/ folder (extra "tensorboard")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "rule": RuleSection,
            "output": OutputConfig}
METHOD_EXTRA_KEYS = ("label", "rule", "rounds", "lr")


@dataclass
class RunSpec:
    """One fully resolved run: what a checkpoint's config hash covers (output excluded).

    Parameters
    ----------
    label, group : str
        The run's label (with its sweep point) and its method's label.
    data, model, train, output : DataConfig, ModelConfig, TrainConfig, OutputConfig
    rule : fedsim.rules.RuleParams
        The resolved parameters of the run's rule (``rule.name`` is the rule).
    reference_rounds : int
        The uncompressed reference run's length (the base ``train.rounds``).
    """

    label: str
    group: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    rule: object
    output: OutputConfig
    reference_rounds: int

    def to_dict(self):
        """Plain dict of everything but the output section.

        Returns
        -------
        dict
            The rule part holds the rule's name and its own knobs only.
        """
        return {"label": self.label, "data": dataclasses.asdict(self.data),
                "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train),
                "rule": self.rule.to_dict(), "reference_rounds": self.reference_rounds}

    def config_hash(self):
        """SHA-256 of the canonical JSON of :meth:`to_dict`.

        Returns
        -------
        str
            64 hex digits.
        """
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class Config:
    """A whole experiment: shared settings plus the methods to compare.

    Parameters
    ----------
    data, model, train, output : DataConfig, ModelConfig, TrainConfig, OutputConfig
    rule : RuleSection
        The ``[rule]`` section (single-run rule name, shared knob defaults).
    methods : list of dict
        The ``[[methods]]`` entries (validated by :func:`parse_config`).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rule: RuleSection = field(default_factory=RuleSection)
    output: OutputConfig = field(default_factory=OutputConfig)
    methods: list = field(default_factory=list)  # list of dicts (validated)

    def runs(self, only=None):
        """Expand methods and sweeps into :class:`RunSpec` objects (in file order).

        Parameters
        ----------
        only : sequence of str, optional
            Keep the methods with these labels (a run's group).

        Returns
        -------
        list of RunSpec

        Raises
        ------
        ConfigError
            ``only`` names an unknown method, two runs share a label or a run
            folder (see :func:`fedsim.layout.check_run_folders`), a sweep is
            malformed, or a run's rule parameters are invalid.
        """
        entries = self.methods or [{"label": self.rule.name, "rule": self.rule.name}]
        if only:
            known = [m.get("label", m.get("rule")) for m in entries]
            missing = [o for o in only if o not in known]
            if missing:
                raise ConfigError(f"--only names unknown methods {missing}; methods are {known}")
            entries = [m for m in entries if m.get("label", m.get("rule")) in only]
        specs = []
        for entry in entries:
            specs.extend(self._expand(entry))
        labels = [s.label for s in specs]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError(f"two runs would share the labels {dup}; give the methods distinct labels")
        check_run_folders(labels)
        return specs

    def _expand(self, entry):
        """RunSpecs of one method entry (one per sweep point)."""
        group = entry.get("label", entry.get("rule", self.rule.name))
        sweep = {k: v for k, v in entry.items() if isinstance(v, list)}
        lengths = {len(v) for v in sweep.values()}
        if len(lengths) > 1:
            raise ConfigError(f"method {group!r}: swept keys {sorted(sweep)} must have lists of one length, "
                              f"got lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 1
        if n == 0:
            raise ConfigError(f"method {group!r}: a swept key has an empty list")
        out = []
        for i in range(n):
            point = {k: (v[i] if isinstance(v, list) else v) for k, v in entry.items()}
            train = dataclasses.replace(self.train)
            knobs = {}
            for key, value in point.items():
                if key in ("label", "rule"):
                    continue
                if key in ("rounds", "lr"):
                    setattr(train, key, _coerce(TrainConfig, key, value, f"methods.{group}"))
                else:
                    knobs[key] = value
            rule = self.rule.params_for(point.get("rule", self.rule.name), knobs, f"methods.{group}")
            _validate_section("train", train)
            suffix = ",".join(f"{k}={point[k]}" for k in sweep)
            label = f"{group}[{suffix}]" if suffix else group
            out.append(RunSpec(label, group, copy.deepcopy(self.data), copy.deepcopy(self.model), train,
                               rule, copy.deepcopy(self.output), reference_rounds=self.train.rounds))
        return out


# ----------------------------------------------------------------------------- parsing
def _coerce_rule_key(rule, key, value, where):
    """Type-check one knob value of ``rule`` (an error names the rule when the key is another rule's)."""
    from .rules import RULES
    from .rules._registry import _foreign_knob_message
    cls = RULES[rule].Params
    if key not in cls.knobs():
        raise ConfigError(_foreign_knob_message(rule, key, where))
    return _coerce(cls, key, value, where)


def _validate_section(name, obj):
    """Value checks that the types alone do not express (floats finite even when set after parsing)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}.{f.name} must be a finite number, got {value!r}")
    if name == "data":
        from .data import DATASETS
        _check(obj.dataset in DATASETS, f"data.dataset: unknown dataset {obj.dataset!r}; choose one of {list(DATASETS)}")
        _check(obj.num_clients > 0, f"data.num_clients must be positive, got {obj.num_clients}")
        _check(obj.alpha > 0, f"data.alpha must be positive, got {obj.alpha}")
        _check(obj.classes_per_client > 0, f"data.classes_per_client must be positive, got {obj.classes_per_client}")
        _check(obj.batch_size is None or obj.batch_size > 0, f"data.batch_size must be positive, got {obj.batch_size}")
        _check(obj.samples_per_client is None or obj.samples_per_client > 0,
               f"data.samples_per_client must be positive, got {obj.samples_per_client}")
        _check(obj.fallback is None or obj.fallback == "synthetic" or obj.fallback in DATASETS,
               f"data.fallback must be 'synthetic' or a dataset name ({', '.join(DATASETS)}), got {obj.fallback!r}")
        from ._augment import AUGMENTATIONS
        _check(obj.augment in AUGMENTATIONS, f"data.augment must be one of {AUGMENTATIONS}, got {obj.augment!r}")
        for key in TEXT_KEYS:
            value = getattr(obj, key)
            _check(value is None or obj.dataset == "shakespeare",
                   f"data.{key} applies to text datasets only (dataset 'shakespeare'), not {obj.dataset!r}")
            _check(value is None or value > 0, f"data.{key} must be positive, got {value}")
        if obj.max_chars_per_client is not None:
            seq_len = 80 if obj.seq_len is None else obj.seq_len
            _check(obj.max_chars_per_client > seq_len,
                   f"data.max_chars_per_client must exceed data.seq_len ({seq_len}): a client needs one "
                   f"window of seq_len + 1 characters, got {obj.max_chars_per_client}")
    elif name == "model":
        from .models import MODELS
        _check(obj.name in MODELS, f"model.name: unknown model {obj.name!r}; choose one of {list(MODELS)}")
    elif name == "train":
        _check(obj.rounds > 0, f"train.rounds must be positive, got {obj.rounds}")
        _check(obj.clients_per_round > 0, f"train.clients_per_round must be positive, got {obj.clients_per_round}")
        _check(obj.lr > 0 and obj.lr == obj.lr and obj.lr != float("inf"), f"train.lr must be a positive finite number, got {obj.lr}")
        _check(obj.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}, got {obj.schedule!r}")
        _check(0 <= obj.warmup < 1, f"train.warmup must be in [0, 1), got {obj.warmup}")
        _check(obj.weight_decay >= 0, f"train.weight_decay must be >= 0, got {obj.weight_decay}")
        _check(obj.weighting in WEIGHTINGS, f"train.weighting must be one of {WEIGHTINGS}, got {obj.weighting!r}")
        _check(obj.seed >= 0, f"train.seed must be >= 0, got {obj.seed}")
        _check(obj.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", obj.device) is not None,
               f"train.device must be 'cpu', 'cuda' or 'cuda:N', got {obj.device!r}")
        from .clients import ENGINES
        _check(obj.engine in ENGINES, f"train.engine must be one of {sorted(ENGINES)}, got {obj.engine!r}")
        _check(obj.eval_every > 0, f"train.eval_every must be positive, got {obj.eval_every}")
        _check(obj.threads is None or obj.threads > 0, f"train.threads must be positive, got {obj.threads}")
        _check(obj.sampling in SAMPLINGS, f"train.sampling must be one of {SAMPLINGS}, got {obj.sampling!r}")
        _check(obj.weight_decay_placement in WD_PLACEMENTS,
               f"train.weight_decay_placement must be one of {WD_PLACEMENTS}, got {obj.weight_decay_placement!r}")
        _check(obj.clip_norm is None or (0 < obj.clip_norm < float("inf")),
               f"train.clip_norm must be a positive finite number (or none), got {obj.clip_norm}")
        from .accounting import ACCOUNTINGS
        _check(obj.accounting in ACCOUNTINGS, f"train.accounting must be one of {ACCOUNTINGS}, got {obj.accounting!r}")
    elif name == "output":
        _check(obj.checkpoint_every >= 0, f"output.checkpoint_every must be >= 0 (0: never), got {obj.checkpoint_every}")
        _check(obj.metrics in METRIC_FORMATS, f"output.metrics must be one of {METRIC_FORMATS}, got {obj.metrics!r}")
        _check(bool(obj.name) and "/" not in obj.name and "\\" not in obj.name and obj.name not in (".", ".."),
               f"output.name must be a folder name (not empty, '.' or '..', no slashes), got {obj.name!r}")


def _parse_rule_section(section):
    """The ``[rule]`` table as a :class:`RuleSection` (types checked; values validated per rule)."""
    from .rules import RULES, all_knobs, rules_with_knob
    rule = RuleSection()
    for key, value in section.items():
        if key == "name":
            rule.name = _coerce(RuleSection, "name", value, "rule")
        elif key in all_knobs():
            rule.values[key] = _coerce(RULES[rules_with_knob(key)[0]].Params, key, value, "rule")
        else:
            raise ConfigError(f"unknown key rule.{key}; valid keys: {', '.join(['name'] + all_knobs())}")
    _check(rule.name in RULES, f"unknown rule {rule.name!r}; choose one of {sorted(RULES)}")
    # Shared values are validated by every rule that has the key (a method may still override them).
    for name, cls in RULES.items():
        if any(k in cls.Params.knobs() for k in rule.values):
            rule.params_for(name)
    return rule


def _validate_method(entry, i, default_rule):
    """Check the keys and types of one [[methods]] entry (lists allowed: sweeps)."""
    from .rules import RULES
    if not isinstance(entry, dict):
        raise ConfigError(f"methods[{i}] must be a table")
    where = f"methods[{i}]"
    rule = entry.get("rule", default_rule)
    if "rule" in entry:
        _check(isinstance(rule, str) and rule, f"{where}.rule must be a non-empty string, got {rule!r}")
        _check(rule in RULES, f"{where}: unknown rule {rule!r}; choose one of {sorted(RULES)}")
    for key, value in entry.items():
        if key in ("label", "rule"):
            _check(isinstance(value, str) and value, f"{where}.{key} must be a non-empty string, got {value!r}")
            continue
        for v in (value if isinstance(value, list) else [value]):
            if key in ("rounds", "lr"):
                _coerce(TrainConfig, key, v, where)
            else:
                _coerce_rule_key(rule, key, v, where)


def parse_config(raw):
    """Build a validated :class:`Config` from a dict (as read from TOML).

    Parameters
    ----------
    raw : dict
        Sections as tables, ``methods`` as a list of tables.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Unknown sections or keys, wrong types, values out of range, a method key
        that is not a knob of the method's rule.
    """
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a table")
    unknown = sorted(set(raw) - set(SECTIONS) - {"methods"})
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; valid: {sorted(SECTIONS) + ['methods']}")
    cfg = Config()
    for name, cls in SECTIONS.items():
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"[{name}] must be a table")
        if name == "rule":
            cfg.rule = _parse_rule_section(section)
            continue
        obj = getattr(cfg, name)
        for key, value in section.items():
            setattr(obj, key, _coerce(cls, key, value, name))
        _validate_section(name, obj)
    methods = raw.get("methods", [])
    if not isinstance(methods, list):
        raise ConfigError("methods must be an array of tables ([[methods]])")
    for i, entry in enumerate(methods):
        _validate_method(entry, i, cfg.rule.name)
    cfg.methods = copy.deepcopy(methods)
    cfg.runs()  # surfaces sweep and label errors now
    return cfg


def default_config_path():
    """Path of the packaged default experiment (``fedsim/configs/default.toml``).

    Returns
    -------
    Path
    """
    return Path(__file__).parent / "configs" / "default.toml"


def _read_toml(path):
    """Parse a TOML file with a clear error."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a folder, not a TOML file; pass the .toml file inside it")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def _parse_value(text):
    """A --set value: TOML syntax (numbers, booleans, lists, quoted strings), else a bare string."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw, overrides):
    """Apply ``section.key=value`` overrides to a raw config dict (a new dict is returned).

    ``rule.KEY=V`` sets the shared rule value and removes KEY from every method,
    so an explicit override wins everywhere; ``methods.LABEL.KEY=V`` changes one
    method.

    Parameters
    ----------
    raw : dict
        A config as read from TOML.
    overrides : sequence of str
        ``section.key=value`` or ``methods.LABEL.key=value`` items (TOML values).

    Returns
    -------
    dict

    Raises
    ------
    ConfigError
        A malformed item, an unknown section or method label.
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        value = _parse_value(text.strip())
        if parts[0] == "methods":
            if len(parts) != 3:
                raise ConfigError(f"override {item!r}: use methods.LABEL.key=value")
            entries = [m for m in raw.get("methods", []) if m.get("label", m.get("rule")) == parts[1]]
            if not entries:
                labels = [m.get("label", m.get("rule")) for m in raw.get("methods", [])]
                raise ConfigError(f"override {item!r}: no method labelled {parts[1]!r}; methods: {labels}")
            for m in entries:
                m[parts[2]] = value
            continue
        if len(parts) != 2:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        section, key = parts
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; valid: {sorted(SECTIONS)}")
        raw.setdefault(section, {})[key] = value
        if section == "rule":
            for m in raw.get("methods", []):
                m.pop(key, None)
        if section == "train" and key in ("rounds", "lr"):
            for m in raw.get("methods", []):
                m.pop(key, None)
    return raw


def load_config(path=None, overrides=(), *, single_rule=None):
    """Read a TOML experiment (default: the packaged default) and apply overrides.

    Parameters
    ----------
    path : str or Path, optional
        TOML file; ``None`` reads ``fedsim/configs/default.toml``.
    overrides : sequence of str
        ``section.key=value`` items (see :func:`apply_overrides`).
    single_rule : str, optional
        Run only this rule, with the ``[rule]`` settings (methods are dropped).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        A missing or invalid file, a bad override, an invalid value.
    """
    raw = _read_toml(default_config_path() if path is None else path)
    if single_rule is not None:
        raw = dict(raw)
        raw.pop("methods", None)
        raw.setdefault("rule", {})
        raw["rule"] = dict(raw["rule"], name=single_rule)
    return parse_config(apply_overrides(raw, overrides))


def dump_toml(cfg):
    """The config as TOML text that :func:`load_config` reads back to the same runs.

    None values are left out (they are the defaults); ``[rule]`` holds what the
    file gave (name and shared knob values), not every rule's defaults; strings
    of any Unicode (emoji included) are written as UTF-8 by :mod:`fedsim._toml`.

    Parameters
    ----------
    cfg : Config

    Returns
    -------
    str

    Raises
    ------
    ConfigError
        A value TOML cannot hold (e.g. a string with a lone surrogate).
    """
    from ._toml import dumps

    sections = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        sections[name] = {"name": section.name, **section.values} if name == "rule" else dataclasses.asdict(section)
    return dumps(sections, [("methods", cfg.methods)])

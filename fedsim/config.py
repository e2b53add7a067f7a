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
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import ConfigError

__all__ = [
    "Config", "DataConfig", "ModelConfig", "TrainConfig", "RuleConfig", "OutputConfig", "RunSpec",
    "load_config", "parse_config", "apply_overrides", "default_config_path", "dump_toml",
]

SCHEDULES = ("triangular", "constant", "cosine")
WEIGHTINGS = ("samples", "uniform")
ZEROINGS = ("buckets", "subtract")
LR_PLACEMENTS = ("inside", "after")
SKETCH_KINDS = ("count", "identity")
METRIC_FORMATS = ("csv", "jsonl")
TEXT_KEYS = ("seq_len", "max_chars_per_client", "min_chars_per_client", "max_test_sequences")


@dataclass
class DataConfig:
    """Dataset and how it is split over clients."""

    dataset: str = "digits"
    root: typing.Optional[str] = None
    # Used, with a warning, when the dataset's files are missing (e.g. "synthetic_cifar10").
    fallback: typing.Optional[str] = None
    partition: str = "pathological"
    num_clients: int = 100
    alpha: float = 0.5
    classes_per_client: int = 1
    samples_per_client: typing.Optional[int] = None
    batch_size: typing.Optional[int] = None  # a client's batch per round; None: all its samples
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


@dataclass
class RuleConfig:
    """Server rule and its knobs; each rule reads the keys it needs."""

    name: str = "fetchsgd"
    momentum: float = 0.9
    k: int = 100
    rows: int = 5
    cols: int = 1000
    sketch: str = "count"  # "identity": exact compressor (FetchSGD becomes true top-k)
    sketch_seed: int = 0
    sketch_backend: str = "auto"
    sketch_hash_version: typing.Optional[int] = None  # None: auto (2 when cols % 4 == 0, else 1)
    zeroing: str = "buckets"  # FetchSGD: "buckets" (reference code) or "subtract" (Algorithm 1)
    lr_placement: str = "inside"  # FetchSGD / true top-k: eta inside the error or after unsketching
    second_round: int = 0  # FetchSGD: p > 0 fetches exact values of p*k candidates
    momentum_stopping: bool = True  # true top-k: zero momentum where updated
    local_error_feedback: bool = False  # local top-k
    global_momentum: bool = True  # local top-k
    local_epochs: int = 1  # FedAvg
    local_batch_size: typing.Optional[int] = None  # FedAvg; None: full local batch
    server_lr: float = 1.0  # FedAvg
    server_momentum: bool = False  # FedAvg


@dataclass
class OutputConfig:
    """Where and how results are written."""

    dir: str = "runs"
    name: str = "default"
    checkpoint_every: int = 50
    metrics: str = "csv"
    plot: bool = True
    progress: bool = True


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "rule": RuleConfig,
            "output": OutputConfig}
METHOD_EXTRA_KEYS = ("label", "rule", "rounds", "lr")


@dataclass
class RunSpec:
    """One fully resolved run: what a checkpoint's config hash covers (output excluded)."""

    label: str
    group: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    rule: RuleConfig
    output: OutputConfig
    reference_rounds: int  # the uncompressed reference run's length (the base ``train.rounds``)

    def to_dict(self):
        """Plain dict of everything but the output section."""
        return {"label": self.label, "data": dataclasses.asdict(self.data),
                "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train),
                "rule": dataclasses.asdict(self.rule), "reference_rounds": self.reference_rounds}

    def config_hash(self):
        """SHA-256 of the canonical JSON of :meth:`to_dict`."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class Config:
    """A whole experiment: shared settings plus the methods to compare."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rule: RuleConfig = field(default_factory=RuleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    methods: list = field(default_factory=list)  # list of dicts (validated)

    def runs(self, only=None):
        """Expand methods and sweeps into :class:`RunSpec` objects (in file order).

        Parameters
        ----------
        only : sequence of str, optional
            Keep the methods with these labels (a run's group).
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
            rule = dataclasses.replace(self.rule, name=point.get("rule", self.rule.name))
            train = dataclasses.replace(self.train)
            for key, value in point.items():
                if key in ("label", "rule"):
                    continue
                if key in ("rounds", "lr"):
                    setattr(train, key, _coerce(TrainConfig, key, value, f"methods.{group}"))
                else:
                    setattr(rule, key, _coerce(RuleConfig, key, value, f"methods.{group}"))
            _validate_section("rule", rule)
            _validate_section("train", train)
            suffix = ",".join(f"{k}={point[k]}" for k in sweep)
            label = f"{group}[{suffix}]" if suffix else group
            out.append(RunSpec(label, group, copy.deepcopy(self.data), copy.deepcopy(self.model), train,
                               rule, copy.deepcopy(self.output), reference_rounds=self.train.rounds))
        return out


# ----------------------------------------------------------------------------- parsing
def _type_of(cls, key):
    """The declared type of a dataclass field, as (base type, optional)."""
    hint = typing.get_type_hints(cls)[key]
    args = typing.get_args(hint)
    if type(None) in args:
        return [a for a in args if a is not type(None)][0], True
    return hint, False


def _coerce(cls, key, value, where):
    """Check one value against the field type (ints widen to floats)."""
    names = [f.name for f in dataclasses.fields(cls)]
    if key not in names:
        raise ConfigError(f"unknown key {where}.{key}; valid keys: {', '.join(names)}")
    base, optional = _type_of(cls, key)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}.{key} may not be empty")
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}.{key} must be {base.__name__}{' or none' if optional else ''}, "
                          f"got {value!r}")
    return value


def _check(cond, msg):
    """Raise ConfigError(msg) unless cond."""
    if not cond:
        raise ConfigError(msg)


def _validate_section(name, obj):
    """Value checks that the types alone do not express."""
    if name == "data":
        _check(obj.num_clients > 0, f"data.num_clients must be positive, got {obj.num_clients}")
        _check(obj.alpha > 0, f"data.alpha must be positive, got {obj.alpha}")
        _check(obj.classes_per_client > 0, f"data.classes_per_client must be positive, got {obj.classes_per_client}")
        _check(obj.batch_size is None or obj.batch_size > 0, f"data.batch_size must be positive, got {obj.batch_size}")
        _check(obj.samples_per_client is None or obj.samples_per_client > 0,
               f"data.samples_per_client must be positive, got {obj.samples_per_client}")
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
    elif name == "rule":
        from .rules import RULES
        _check(obj.name in RULES, f"unknown rule {obj.name!r}; choose one of {sorted(RULES)}")
        _check(0 <= obj.momentum < 1, f"rule.momentum must be in [0, 1), got {obj.momentum}")
        _check(obj.k > 0, f"rule.k must be positive, got {obj.k}")
        _check(obj.rows > 0, f"rule.rows must be positive, got {obj.rows}")
        _check(obj.cols > 0, f"rule.cols must be positive, got {obj.cols}")
        _check(obj.sketch in SKETCH_KINDS, f"rule.sketch must be one of {SKETCH_KINDS}, got {obj.sketch!r}")
        _check(obj.sketch_backend in ("auto", "numpy", "numba", "cupy"),
               f"rule.sketch_backend must be auto, numpy, numba or cupy, got {obj.sketch_backend!r}")
        _check(obj.sketch_hash_version in (None, 1, 2),
               f"rule.sketch_hash_version must be 1 or 2, got {obj.sketch_hash_version!r}")
        _check(obj.sketch_hash_version != 2 or obj.cols % 4 == 0,
               f"rule.sketch_hash_version=2 needs rule.cols divisible by 4, got {obj.cols}")
        _check(obj.zeroing in ZEROINGS, f"rule.zeroing must be one of {ZEROINGS}, got {obj.zeroing!r}")
        _check(obj.lr_placement in LR_PLACEMENTS,
               f"rule.lr_placement must be one of {LR_PLACEMENTS}, got {obj.lr_placement!r}")
        _check(obj.second_round >= 0, f"rule.second_round must be >= 0, got {obj.second_round}")
        _check(obj.local_epochs > 0, f"rule.local_epochs must be positive, got {obj.local_epochs}")
        _check(obj.local_batch_size is None or obj.local_batch_size > 0,
               f"rule.local_batch_size must be positive, got {obj.local_batch_size}")
        _check(obj.server_lr > 0, f"rule.server_lr must be positive, got {obj.server_lr}")
    elif name == "output":
        _check(obj.checkpoint_every >= 0, f"output.checkpoint_every must be >= 0 (0: never), got {obj.checkpoint_every}")
        _check(obj.metrics in METRIC_FORMATS, f"output.metrics must be one of {METRIC_FORMATS}, got {obj.metrics!r}")
        _check(bool(obj.name) and "/" not in obj.name, f"output.name must be a non-empty folder name, got {obj.name!r}")


def _validate_method(entry, i):
    """Check the keys and types of one [[methods]] entry (lists allowed: sweeps)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"methods[{i}] must be a table")
    rule_keys = [f.name for f in dataclasses.fields(RuleConfig) if f.name != "name"]
    for key, value in entry.items():
        where = f"methods[{i}]"
        if key in ("label", "rule"):
            _check(isinstance(value, str) and value, f"{where}.{key} must be a non-empty string, got {value!r}")
            continue
        if key not in rule_keys and key not in ("rounds", "lr"):
            raise ConfigError(f"unknown key {where}.{key}; valid keys: {', '.join(METHOD_EXTRA_KEYS + tuple(rule_keys))}")
        cls = TrainConfig if key in ("rounds", "lr") else RuleConfig
        for v in (value if isinstance(value, list) else [value]):
            _coerce(cls, key, v, where)
    from .rules import RULES
    rule = entry.get("rule")
    if rule is not None:
        _check(rule in RULES, f"methods[{i}]: unknown rule {rule!r}; choose one of {sorted(RULES)}")


def parse_config(raw):
    """Build a validated :class:`Config` from a dict (as read from TOML).

    Raises
    ------
    ConfigError
        Unknown sections or keys, wrong types, values out of range.
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
        obj = getattr(cfg, name)
        for key, value in section.items():
            setattr(obj, key, _coerce(cls, key, value, name))
        _validate_section(name, obj)
    methods = raw.get("methods", [])
    if not isinstance(methods, list):
        raise ConfigError("methods must be an array of tables ([[methods]])")
    for i, entry in enumerate(methods):
        _validate_method(entry, i)
    cfg.methods = copy.deepcopy(methods)
    cfg.runs()  # surfaces sweep and label errors now
    return cfg


def default_config_path():
    """Path of the packaged default experiment (``fedsim/configs/default.toml``)."""
    return Path(__file__).parent / "configs" / "default.toml"


def _read_toml(path):
    """Parse a TOML file with a clear error."""
    path = Path(path)
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
    """
    raw = _read_toml(default_config_path() if path is None else path)
    if single_rule is not None:
        raw = dict(raw)
        raw.pop("methods", None)
        raw.setdefault("rule", {})
        raw["rule"] = dict(raw["rule"], name=single_rule)
    return parse_config(apply_overrides(raw, overrides))


def _toml_value(v):
    """One value in TOML syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


def dump_toml(cfg):
    """The config as TOML text (None values are left out: they are the defaults)."""
    lines = []
    for name in SECTIONS:
        lines.append(f"[{name}]")
        for key, value in dataclasses.asdict(getattr(cfg, name)).items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    for entry in cfg.methods:
        lines.append("[[methods]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items() if v is not None)
        lines.append("")
    return "\n".join(lines)

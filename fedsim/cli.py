"""Command line: ``fedsim run`` (default), ``fedsim config`` (print the resolved config), ``fedsim list``.

Only the command line prints and configures logging; the library logs through
the ``fedsim`` and ``sketchlib`` loggers.
"""
import argparse
import dataclasses
import logging
import sys

from sketchlib import SketchError

from .errors import FedsimError

__all__ = ["main", "build_parser", "config_from_args", "configure_logging", "rule_knobs", "format_list"]

_DESCRIPTION = """Federated learning simulator: FetchSGD and rivals.

A bare `fedsim` runs `fedsim run` (the packaged default experiment); options
without a command go to `fedsim run` too (`fedsim --rounds 30` = `fedsim run --rounds 30`)."""


def _version():
    """The version of the sketchgrad code being run."""
    from sketchlib import __version__

    return __version__


def _choices(names):
    """Names for a help text: ``a, b, c``."""
    return ", ".join(names)


def _rules_epilog():
    """The registered rules and their knobs (from the registry), for ``--help``."""
    from .rules import RULES
    lines = ["rules (rule.name) and their knobs (keys of [rule] / [[methods]], --set rule.KEY=V):"]
    lines += [f"  {name}: {', '.join(cls.Params.knobs())}" for name, cls in RULES.items()]
    lines.append("`fedsim list` shows the defaults and what each knob means.")
    return "\n".join(lines)


def build_parser():
    """The argument parser.

    Returns
    -------
    argparse.ArgumentParser
    """
    from .clients import ENGINES
    from .data import DATASETS
    from .models import MODELS
    from .rules import RULES

    p = argparse.ArgumentParser(prog="fedsim", description=_DESCRIPTION, epilog=_rules_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fedsim (sketchgrad) {_version()}")
    sub = p.add_subparsers(dest="command", metavar="{run,config,list}")
    for name, help_ in (("run", "run an experiment (default: the packaged default.toml); the default command"),
                        ("config", "print the resolved config as TOML and the runs it expands to"),
                        ("list", "list the datasets, models and rules (with their knobs and defaults)")):
        s = sub.add_parser(name, help=help_, epilog=_rules_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "list":
            s.add_argument("--markdown", action="store_true", help="the rules' knobs as the README's Markdown table")
            continue
        s.add_argument("-v", "--verbose", action="count", default=0, help="more messages (debug)")
        s.add_argument("-q", "--quiet", action="count", default=0,
                       help="only warnings and errors, no progress bar (the table is still printed)")
        s.add_argument("--config", help="TOML experiment file (default: fedsim/configs/default.toml)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set rule.k=1000 or --set methods.fedavg.lr=0.05 "
                            "(repeatable; rule.* and train.rounds/lr overrides win over every method)")
        s.add_argument("--only", help="comma-separated method labels to run")
        s.add_argument("--rule", help=f"run this single rule with the [rule] settings (drops [[methods]]); "
                                      f"one of: {_choices(RULES)}")
        s.add_argument("--rounds", type=int, help="= --set train.rounds=N")
        s.add_argument("--lr", type=float, help="= --set train.lr=X")
        s.add_argument("--clients-per-round", type=int, help="= --set train.clients_per_round=N")
        s.add_argument("--seed", type=int, help="= --set train.seed=N")
        s.add_argument("--device", help="cpu, cuda or cuda:N (= --set train.device=...)")
        s.add_argument("--engine", help=f"client engine (= --set train.engine=...); one of: {_choices(ENGINES)}")
        s.add_argument("--dataset", help=f"= --set data.dataset=...; one of: {_choices(DATASETS)}")
        s.add_argument("--model", help=f"= --set model.name=...; one of: {_choices(MODELS)}")
        s.add_argument("--name", help="experiment name, the output subfolder (= --set output.name=...)")
        s.add_argument("--out", help="output folder (default: output.dir/output.name)")
        s.add_argument("--checkpoint-every", type=int, help="= --set output.checkpoint_every=N (0: never)")
        s.add_argument("--metrics", choices=("csv", "jsonl"), help="per-round metrics format")
        s.add_argument("--resume", action="store_true", help="continue from checkpoints; skip finished runs")
        s.add_argument("--no-plot", action="store_true", help="do not draw PNG plots")
        s.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


_FLAGS = {"rounds": "train.rounds", "lr": "train.lr", "clients_per_round": "train.clients_per_round",
          "seed": "train.seed", "device": "train.device", "engine": "train.engine", "dataset": "data.dataset",
          "model": "model.name", "name": "output.name", "checkpoint_every": "output.checkpoint_every",
          "metrics": "output.metrics"}


def config_from_args(args):
    """The Config that the parsed arguments describe.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``run`` or ``config`` arguments.

    Returns
    -------
    fedsim.config.Config

    Raises
    ------
    ConfigError
        A bad file, override or value.
    """
    from .config import load_config

    overrides = list(args.overrides)
    for attr, key in _FLAGS.items():
        value = getattr(args, attr)
        if value is not None:
            overrides.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    if args.no_plot:
        overrides.append("output.plot=false")
    if args.no_progress or getattr(args, "quiet", 0):
        overrides.append("output.progress=false")
    return load_config(args.config, overrides, single_rule=args.rule)


def rule_knobs():
    """Every registered rule's knobs.

    Each rule class describes its own knobs in its ``Params`` dataclass (field
    defaults and ``metadata["help"]``).

    Returns
    -------
    dict of str -> list of (str, object, str)
        ``{rule name: [(knob, default, help), ...]}`` in registration order.
    """
    from .rules import RULES

    return {name: [(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory(),
                    f.metadata.get("help", "")) for f in dataclasses.fields(cls.Params)]
            for name, cls in RULES.items()}


def format_list():
    """The text of ``fedsim list``: datasets, models, partitions, engines and rules with their knobs."""
    from .clients import ENGINES
    from .data import DATASETS, SCHEMES
    from .models import MODELS

    lines = [f"{head:29}{_choices(names)}" for head, names in (
        ("datasets (data.dataset):", DATASETS), ("models (model.name):", MODELS),
        ("partitions (data.partition):", SCHEMES), ("engines (train.engine):", ENGINES))]
    lines += ["",
             "rules (rule.name) and their knobs (set with --set rule.KNOB=V or per method in [[methods]]):"]
    for name, knobs in rule_knobs().items():
        lines.append(f"  {name}")
        width = max((len(f"{k} = {_default(v)}") for k, v, _ in knobs), default=0)
        lines.extend(f"    {f'{k} = {_default(v)}'.ljust(width)}  {help_}".rstrip() for k, v, help_ in knobs)
    return "\n".join(lines)


def _default(value):
    """A default as it is written in TOML (``none`` for None)."""
    from ._toml import format_value

    return "none" if value is None else format_value(value)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after setup)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Formatter(logging.Formatter):
    """``fedsim: message`` for INFO, ``fedsim: warning: message`` for the other levels."""

    def format(self, record):
        prefix = record.name.split(".")[0]
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{prefix}: {level}{record.getMessage()}" + (f"\n{self.formatException(record.exc_info)}"
                                                             if record.exc_info else "")


def configure_logging(verbosity=0):
    """Send the ``fedsim`` and ``sketchlib`` loggers to stderr (the command line's choice, not the library's).

    Parameters
    ----------
    verbosity : int
        0: INFO and above; 1 or more (``-v``): DEBUG; -1 or less (``-q``): WARNING and above.
    """
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    for name in ("fedsim", "sketchlib"):
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(h)  # main() called again in one process: one handler only
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
        logger.setLevel(level)


def main(argv=None):
    """Entry point of the ``fedsim`` command.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``); without a command, ``run`` is assumed.

    Returns
    -------
    int
        0 when every run finished, 1 when one diverged, 2 on a usage or configuration error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run"] + argv
    args = build_parser().parse_args(argv)
    if args.command == "list":
        if args.markdown:
            from .rules import knobs_markdown
            print(knobs_markdown())
        else:
            print(format_list())
        return 0
    configure_logging(args.verbose - args.quiet)
    try:
        cfg = config_from_args(args)
        only = [s.strip() for s in args.only.split(",")] if args.only else None
        if args.command == "config":
            from .config import dump_toml
            print(dump_toml(cfg))
            for spec in cfg.runs(only):
                knobs = " ".join(f"{k}={v!r}" for k, v in spec.rule.to_dict().items() if k != "name")
                print(f"# run {spec.label}: rule={spec.rule.name} hash={spec.config_hash()[:12]} {knobs}")
            return 0
        from .simulator import run_experiment
        exp = run_experiment(cfg, only=only, out_dir=args.out, resume=args.resume)
        from .report import format_table
        print(format_table(exp.runs, exp.provenance), flush=True)
    except (FedsimError, SketchError) as exc:  # the project's errors: one clean line, no traceback
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(r.status == "ok" for r in exp.runs) else 1

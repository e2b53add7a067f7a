"""Command line: ``fedsim run`` (default), ``fedsim config`` (print the resolved config), ``fedsim list``."""
import argparse
import sys

from sketchlib import SketchError

from .errors import FedsimError

__all__ = ["main", "build_parser", "config_from_args"]


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
    p = argparse.ArgumentParser(prog="fedsim", description="Federated learning simulator: FetchSGD and rivals.",
                                epilog=_rules_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    lst = sub.add_parser("list", help="list the rules and their knobs (defaults, meaning)")
    lst.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    for name, help_ in (("run", "run an experiment (default: the packaged default.toml)"),
                        ("config", "print the resolved config as TOML and the runs it expands to")):
        s = sub.add_parser(name, help=help_, epilog=_rules_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("--config", help="TOML experiment file (default: fedsim/configs/default.toml)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set rule.k=1000 or --set methods.fedavg.lr=0.05 "
                            "(repeatable; rule.* and train.rounds/lr overrides win over every method)")
        s.add_argument("--only", help="comma-separated method labels to run")
        s.add_argument("--rule", help="run this single rule with the [rule] settings (drops [[methods]])")
        s.add_argument("--rounds", type=int, help="= --set train.rounds=N")
        s.add_argument("--lr", type=float, help="= --set train.lr=X")
        s.add_argument("--clients-per-round", type=int, help="= --set train.clients_per_round=N")
        s.add_argument("--seed", type=int, help="= --set train.seed=N")
        s.add_argument("--device", help="cpu, cuda or cuda:N (= --set train.device=...)")
        s.add_argument("--engine", help="client engine: loop or vmap (= --set train.engine=...)")
        s.add_argument("--dataset", help="= --set data.dataset=...")
        s.add_argument("--model", help="= --set model.name=...")
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
    if args.no_progress:
        overrides.append("output.progress=false")
    return load_config(args.config, overrides, single_rule=args.rule)


def _list_rules(markdown):
    """Print every registered rule's knobs with defaults and meaning."""
    from .rules import RULES, knobs_markdown
    if markdown:
        print(knobs_markdown())
        return
    import dataclasses
    for name, cls in RULES.items():
        print(f"{name} ({cls.__name__}, {cls.Params.__name__})")
        for f in dataclasses.fields(cls.Params):
            print(f"  {f.name} = {f.default!r}: {f.metadata.get('help', '')}")


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
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run"] + argv
    args = build_parser().parse_args(argv)
    if args.command == "list":
        _list_rules(args.markdown)
        return 0
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
    except (FedsimError, SketchError) as exc:  # the project's errors: one clean line, no traceback
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(r.status == "ok" for r in exp.runs) else 1

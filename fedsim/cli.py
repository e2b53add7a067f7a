"""Command line: ``fedsim run`` (default), ``fedsim config`` (print the resolved config)."""
import argparse
import sys

from .errors import FedsimError

__all__ = ["main", "build_parser", "config_from_args"]


def build_parser():
    """The argument parser."""
    p = argparse.ArgumentParser(prog="fedsim", description="Federated learning simulator: FetchSGD and rivals.")
    sub = p.add_subparsers(dest="command")
    for name, help_ in (("run", "run an experiment (default: the packaged default.toml)"),
                        ("config", "print the resolved config as TOML and the runs it expands to")):
        s = sub.add_parser(name, help=help_)
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
        s.add_argument("--stop-after-round", type=int, help=argparse.SUPPRESS)  # debug: SIGKILL after round N
    return p


_FLAGS = {"rounds": "train.rounds", "lr": "train.lr", "clients_per_round": "train.clients_per_round",
          "seed": "train.seed", "device": "train.device", "engine": "train.engine", "dataset": "data.dataset",
          "model": "model.name", "name": "output.name", "checkpoint_every": "output.checkpoint_every",
          "metrics": "output.metrics"}


def config_from_args(args):
    """The Config that the parsed arguments describe."""
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


def main(argv=None):
    """Entry point of the ``fedsim`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run"] + argv
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        only = [s.strip() for s in args.only.split(",")] if args.only else None
        if args.command == "config":
            from .config import dump_toml
            print(dump_toml(cfg))
            for spec in cfg.runs(only):
                print(f"# run {spec.label}: rule={spec.rule.name} hash={spec.config_hash()[:12]}")
            return 0
        from .simulator import run_experiment
        exp = run_experiment(cfg, only=only, out_dir=args.out, resume=args.resume,
                             stop_after_round=args.stop_after_round)
    except FedsimError as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"fedsim: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0 if all(r.status == "ok" for r in exp.runs) else 1

"""Federated learning simulator for FetchSGD and its baselines.

Python API::

    import fedsim
    cfg = fedsim.load_config(None, ["train.rounds=50"])   # the packaged default + overrides
    exp = fedsim.run_experiment(cfg)                      # every method; table, CSV, plots
    sim = fedsim.Simulation(cfg.runs()[0]); result = sim.run()   # one run
    rule = fedsim.make_rule(fedsim.rule_params("fetchsgd", k=50, cols=1000), d)   # a rule on its own
"""
from ._names import check_adapters as _check_adapters

_check_adapters()  # another distribution's `adapters` on the path: stop now, with what to do

from .comm import Communicator, LocalCommunicator
from .config import Config, RunSpec, load_config, parse_config
from .errors import (CheckpointError, ClientUpdateError, ConfigError, DataError, DataFileMissing, FedsimError,
                     MissingDependency, ModelError, NonFiniteError, OutputFolderBusy, RankFailure, RunFileError)
from .rules import RULES, make_rule, register_rule, rule_params
from .simulator import ExperimentResult, RunResult, Simulation, run_experiment

__all__ = [
    "Config", "RunSpec", "load_config", "parse_config",
    "Simulation", "run_experiment", "RunResult", "ExperimentResult",
    "Communicator", "LocalCommunicator",
    "RULES", "make_rule", "rule_params", "register_rule",
    "FedsimError", "ConfigError", "CheckpointError", "NonFiniteError", "ClientUpdateError", "DataError",
    "DataFileMissing", "ModelError", "RankFailure", "MissingDependency", "OutputFolderBusy", "RunFileError",
]

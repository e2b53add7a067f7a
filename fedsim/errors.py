"""Exceptions of the simulator: every error a user can see is a :class:`FedsimError`.

Subclasses that replace a built-in exception also derive from it (``ConfigError``
is a ``ValueError``, ``DataFileMissing`` a ``FileNotFoundError``...), so code
that caught the built-in keeps working.
"""

__all__ = ["FedsimError", "ConfigError", "CheckpointError", "NonFiniteError", "ClientUpdateError", "DataError",
           "DataFileMissing", "ModelError", "RankFailure", "MissingDependency", "OutputFolderBusy", "RunFileError"]


class FedsimError(Exception):
    """Base class of the simulator's errors."""


class ConfigError(FedsimError, ValueError):
    """A config or an argument is invalid; the message names the key and the problem."""


class CheckpointError(FedsimError, ValueError):
    """A checkpoint is missing, truncated, corrupt, from another configuration, or of another shape."""


class NonFiniteError(FedsimError, FloatingPointError):
    """The model weights became NaN or infinite; the run stops (message: round, method, checkpoint)."""


class ClientUpdateError(NonFiniteError):
    """A client's update was NaN or infinite; it was rejected before reaching the server state."""


class DataError(FedsimError, ValueError):
    """A dataset name, option, partition or data file is invalid; the message names it."""


class DataFileMissing(DataError, FileNotFoundError):
    """A dataset's files are missing; the message names them and the folders searched."""


class ModelError(FedsimError, ValueError):
    """A model name or its input shape / number of classes is invalid."""


class RankFailure(FedsimError, RuntimeError):
    """A collective failed or timed out: another rank probably died or stalled."""


class MissingDependency(FedsimError, ImportError):
    """An optional package that a feature needs is not installed; the message says what to install."""


class OutputFolderBusy(FedsimError):
    """Another live run holds the output folder's lock; the message names the holder (pid, host, command)."""


class RunFileError(FedsimError, ValueError):
    """A run's file (``summary.json``, ``metrics.csv``/``.jsonl``) is truncated or malformed; the message
    names the file and what to do."""

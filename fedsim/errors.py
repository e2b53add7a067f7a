"""Exceptions of the simulator (all subclasses of FedsimError)."""

__all__ = ["FedsimError", "ConfigError", "CheckpointError", "NonFiniteError", "ClientUpdateError"]


class FedsimError(Exception):
    """Base class of the simulator's errors."""


class ConfigError(FedsimError, ValueError):
    """A config or an argument is invalid; the message names the key and the problem."""


class CheckpointError(FedsimError):
    """A checkpoint is missing, truncated, corrupt or from another configuration."""


class NonFiniteError(FedsimError, FloatingPointError):
    """The model weights became NaN or infinite; the run stops (message: round, method, checkpoint)."""


class ClientUpdateError(NonFiniteError):
    """A client's update was NaN or infinite; it was rejected before reaching the server state."""

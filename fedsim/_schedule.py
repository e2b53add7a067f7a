"""Learning-rate schedules over rounds."""
import math

from .errors import ConfigError

__all__ = ["learning_rate"]


def learning_rate(schedule, base, t, rounds, warmup):
    """Learning rate of round ``t`` (0-based) out of ``rounds``.

    ``triangular`` (the paper's): linear from ~0 up to ``base`` at ``warmup * rounds``,
    then linearly down to ~0 at the end; ``cosine``: linear warmup then half a
    cosine; ``constant``: ``base``.  Never exactly zero.
    """
    if schedule == "constant":
        return float(base)
    peak = warmup * rounds
    x = t + 1.0
    if x <= peak:
        return float(base) * x / peak
    if schedule == "triangular":
        return float(base) * (rounds - t) / (rounds - peak)
    if schedule == "cosine":
        frac = (t - peak) / max(rounds - peak, 1.0)
        return float(base) * max(0.5 * (1.0 + math.cos(math.pi * frac)), 1.0 / rounds)
    raise ConfigError(f"unknown schedule {schedule!r}")

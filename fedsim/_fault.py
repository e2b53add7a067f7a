"""Test-only fault injection: SIGKILL this process after a given round (crash and resume tests).

Set ``FEDSIM_TEST_KILL_AFTER_ROUND=N`` (and optionally ``FEDSIM_TEST_KILL_RANK=R``
to kill only rank R of a distributed run) in the environment of a ``fedsim``
process; the run loop calls the hook after round N's metrics and checkpoint
are written.  Not a user option: nothing in the CLI exposes it.
"""
import os
import signal

__all__ = ["KILL_AFTER_ROUND_ENV", "KILL_RANK_ENV", "fault_hook"]

KILL_AFTER_ROUND_ENV = "FEDSIM_TEST_KILL_AFTER_ROUND"
KILL_RANK_ENV = "FEDSIM_TEST_KILL_RANK"


def fault_hook(rank):
    """An ``on_round(row)`` callable that kills this process after the configured round, or None."""
    after = os.environ.get(KILL_AFTER_ROUND_ENV)
    only = os.environ.get(KILL_RANK_ENV)
    if not after or (only and int(only) != rank):
        return None
    after = int(after)

    def kill(row):
        if row["round"] == after:
            os.kill(os.getpid(), signal.SIGKILL)
    return kill

"""Tags of the random streams: each draw is ``default_rng([seed, TAG, round, ...])``, never rank-dependent.

The values are part of the trajectory (changing one changes every run), so they never change.
"""
import numpy as np

__all__ = ["CLIENT_SAMPLING", "BATCH_SELECTION", "LOCAL_ORDER", "AUGMENTATION", "EPOCH_ORDER", "stream"]

CLIENT_SAMPLING = 1  # [seed, tag, round]: the round's clients
BATCH_SELECTION = 2  # [seed, tag, round, client]: a client's batch when data.batch_size is smaller
LOCAL_ORDER = 3  # [seed, tag, round, client, epoch]: FedAvg's local sample order
AUGMENTATION = 4  # [seed, tag, round, client(, epoch)]: data.augment's crops and flips
EPOCH_ORDER = 5  # [seed, tag, epoch]: the client order of an epoch (train.sampling = "epoch")


def stream(seed, tag, *keys):
    """The generator of stream ``tag`` at ``keys``."""
    return np.random.default_rng([seed, tag, *keys])

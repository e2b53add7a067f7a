"""The simulator's reads of device values: one function, so they can be counted.

On a GPU, every read of a device tensor's value by the host (``.item()``,
``bool(t)``, ``.tolist()``, ``.cpu()``) waits for all the work queued before it:
a host synchronisation.  fedsim reads its own device values only through
:func:`read_host`, which gathers several small tensors into one transfer, and
:func:`count_host_reads` counts those reads inside a block (all threads), so a
test pins the synchronisations of a step on a CPU.  The sketch backends' reads
are counted separately by :func:`sketchlib.backends.count_host_transfers`.
"""
import contextlib
import dataclasses
import threading

import torch

__all__ = ["HostReads", "count_host_reads", "read_host"]

_counters = []
_lock = threading.Lock()


@dataclasses.dataclass
class HostReads:
    """What :func:`count_host_reads` counted: reads and bytes read."""

    count: int = 0
    nbytes: int = 0


def read_host(*tensors):
    """The values of small tensors, read back to the host in one transfer (counted).

    Parameters
    ----------
    *tensors : torch.Tensor
        On one device; any shape and numeric or bool dtype.  Values pass through
        float64: exact for floats up to 64 bits and for integers below 2**53.

    Returns
    -------
    list of list of float
        Each tensor's elements (flattened), in order.
    """
    parts = [t.detach().reshape(-1).to(torch.float64) for t in tensors]
    flat = parts[0] if len(parts) == 1 else torch.cat(parts)
    values = flat.tolist()   # the one device-to-host read
    if _counters:
        with _lock:
            for counter in _counters:
                counter.count += 1
                counter.nbytes += 8 * len(values)
    out, start = [], 0
    for p in parts:
        out.append(values[start:start + p.numel()])
        start += p.numel()
    return out


@contextlib.contextmanager
def count_host_reads():
    """Count the :func:`read_host` calls made inside the block (all threads).

    Yields
    ------
    HostReads
        Updated as reads happen.
    """
    counter = HostReads()
    with _lock:
        _counters.append(counter)
    try:
        yield counter
    finally:
        with _lock:
            _counters.remove(counter)

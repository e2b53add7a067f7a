"""Communication accounting: bytes up and down per round, and overall compression.

Upload is what the rule says a client sends (sketch table, k values and k
indices, or d floats).  Download follows the paper: a client that takes part in
round t fetches the weights that changed since it last took part (or since
round 0 for a new client, which can rebuild the seeded initial model), sent
sparse (value + index per weight) or dense, whichever is smaller.  To count
that without a per-client copy of the model, the accountant keeps, per
coordinate, the last round that changed it, and a histogram of those rounds:
the number of weights changed since round p is a suffix sum of the histogram.
Those counters stay on the model's device; the simulator reads the suffix sums
back once per round, together with its other per-round scalars
(:meth:`Accountant.changed_since` and the ``changed_since`` / ``changed``
arguments), so the bookkeeping costs no host synchronisation of its own.

Two ways to count (``train.accounting``): ``"fedsim"`` (default, the honest one)
charges a sparse weight or a top-k entry its value and its index (4 + 4 bytes,
8-byte indices past 2**32 coordinates); ``"reference"`` counts as the FetchSGD
reference code does, 4 bytes per downloaded changed weight and per local top-k
value: indices cost nothing (also FetchSGD's second-round candidate indices).
Uploads of sketches and dense vectors are the same under both.

The uncompressed reference changes every weight in every round, so its bytes
for R rounds of W clients are analytic: ``W d`` floats up per round and ``W d``
floats down per round except the first: ``value_bytes * W * d * (2 R - 1)``.
"""
from dataclasses import dataclass

import numpy as np
import torch

from .host import read_host

__all__ = ["ACCOUNTINGS", "Accountant", "AccountingState", "reference_bytes", "index_bytes_for"]

ACCOUNTINGS = ("fedsim", "reference")


def index_bytes_for(d):
    """Bytes of one coordinate index: 4 when d fits in 32 bits, else 8."""
    return 4 if d <= 2**32 else 8


def reference_bytes(d, clients_per_round, rounds, value_bytes=4):
    """``(up, down)`` bytes of the uncompressed run over ``rounds`` rounds."""
    up = value_bytes * clients_per_round * d * rounds
    down = value_bytes * clients_per_round * d * max(rounds - 1, 0)
    return up, down


@dataclass
class AccountingState:
    """Counters (checkpointed)."""

    last_seen: np.ndarray  # (num_clients,) int64: round whose pre-update weights the client holds
    last_changed: torch.Tensor  # (d,) int64: last round that changed the coordinate, -1: never
    hist: torch.Tensor  # (rounds + 1,) int64: hist[r + 1] = coordinates with last_changed == r
    up: int = 0
    down: int = 0
    rounds_done: int = 0


class Accountant:
    """Per-round and total bytes for one run.

    Parameters
    ----------
    d : int
        Model dimension.
    num_clients : int
    rounds : int
        Rounds of this run (sizes the histogram).
    device : torch.device
        Where the per-coordinate counters live (the model's device).
    value_bytes : int, default 4
    accounting : {"fedsim", "reference"}, default "fedsim"
        ``"reference"``: indices are free (see the module docstring); :attr:`index_bytes`
        is then 0, and the rules, built with it, count their uploads the same way.

    Raises
    ------
    ValueError
        Unknown ``accounting``.
    """

    def __init__(self, d, num_clients, rounds, *, device="cpu", value_bytes=4, accounting="fedsim"):
        if accounting not in ACCOUNTINGS:
            raise ValueError(f"accounting must be one of {ACCOUNTINGS}, got {accounting!r}")
        self.d, self.value_bytes = int(d), value_bytes
        self.accounting = accounting
        self.index_bytes = index_bytes_for(d) if accounting == "fedsim" else 0
        hist = torch.zeros(rounds + 1, dtype=torch.int64, device=device)
        hist[0] = d
        self.state = AccountingState(np.zeros(num_clients, dtype=np.int64),
                                     torch.full((d,), -1, dtype=torch.int64, device=device), hist)

    def weights_bytes(self, nnz):
        """Bytes to send ``nnz`` changed weights: sparse or dense, whichever is smaller."""
        return min(self.d * self.value_bytes, nnz * (self.value_bytes + self.index_bytes))

    def changed_since(self):
        """On the device: entry ``p + 1`` counts the weights changed since round ``p`` (entry 0: d).

        Returns
        -------
        torch.Tensor
            int64, shape (rounds + 1,): suffix sums of the histogram.
        """
        # changed since round p: last_changed >= p  <=>  hist index >= p + 1
        return torch.flip(torch.cumsum(torch.flip(self.state.hist, [0]), 0), [0])

    def download(self, t, client_ids, changed_since=None):
        """Bytes each of ``client_ids`` downloads at the start of round ``t`` (records the visit).

        Parameters
        ----------
        t : int
        client_ids : numpy.ndarray
        changed_since : sequence of numbers, optional
            :meth:`changed_since` read back by the caller (with its other scalars);
            default: read here (one host read).

        Returns
        -------
        list of int
        """
        st = self.state
        if changed_since is None:
            (changed_since,) = read_host(self.changed_since())
        nnz = np.asarray(changed_since, dtype=np.float64)[st.last_seen[client_ids] + 1]
        st.last_seen[client_ids] = t
        return [self.weights_bytes(int(n)) for n in nnz]

    def record_update(self, t, update, changed=None):
        """Mark the coordinates that round ``t``'s update changed (nonzero entries).

        Parameters
        ----------
        t : int
        update : torch.Tensor
            The d-vector applied this round.
        changed : int, optional
            ``torch.count_nonzero(update)`` read back by the caller; default: read
            here (one host read).  The rest stays on the device.

        Returns
        -------
        int
            The number of changed coordinates.
        """
        st = self.state
        if changed is None:
            (changed,), = read_host(torch.count_nonzero(update))
        changed = int(changed)
        if changed:
            # A known size and no bincount: neither reads a count back from a GPU.
            idx = torch.nonzero_static(update, size=changed)[:, 0]
            old = st.last_changed[idx]
            st.hist.scatter_add_(0, old + 1, torch.full_like(old, -1))
            st.last_changed[idx] = t
            st.hist[t + 1] += changed
        return changed

    def add(self, up, down):
        """Add one round's totals."""
        self.state.up += int(up)
        self.state.down += int(down)
        self.state.rounds_done += 1

    def state_dict(self):
        """Counters for a checkpoint."""
        st = self.state
        return {"last_seen": torch.from_numpy(st.last_seen.copy()), "last_changed": st.last_changed.cpu().clone(),
                "hist": st.hist.cpu().clone(), "up": st.up, "down": st.down, "rounds_done": st.rounds_done}

    def load_state_dict(self, sd):
        """Restore counters from :meth:`state_dict`."""
        st = self.state
        st.last_seen[...] = sd["last_seen"].numpy()
        st.last_changed.copy_(sd["last_changed"])
        st.hist.copy_(sd["hist"])
        st.up, st.down, st.rounds_done = int(sd["up"]), int(sd["down"]), int(sd["rounds_done"])

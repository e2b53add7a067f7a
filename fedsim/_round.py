"""The round context: what a server rule sees of one round of the simulation."""
import torch

from ._streams import LOCAL_ORDER, stream
from .errors import ClientUpdateError
from .host import read_host

__all__ = ["RoundContext"]


class RoundContext:
    """What a server rule sees of one round: client computations, all-reduce, learning rate.

    Every client result passes a finiteness check (agreed by all ranks) before
    the rule gets it, so a NaN update raises :class:`ClientUpdateError` before
    any server state changes.  Each check costs one host read (through
    :func:`fedsim.host.read_host`): the count of bad results summed over ranks.

    Parameters
    ----------
    t : int
        The round (0-based).
    lr : float
        The round's learning rate.
    client_ids : numpy.ndarray
        The round's sorted client ids (every rank).
    my_ids, my_batches, my_weights : sequence, list of (x, y), torch.Tensor
        This rank's clients, their batches and weights (weights of all ranks sum to 1).
    params : torch.Tensor
        The flat weights (read only).
    model : torch.nn.Module
        The architecture the engine evaluates at ``params``.
    engine : fedsim.clients.LoopEngine or fedsim.vmap_engine.VmapEngine
        Computes client gradients and local training.
    comm : fedsim.Communicator
        All-reduce over ranks.
    client_data : callable
        ``client_data(c) -> (x, y)``: all of client ``c``'s samples (FedAvg).
    seed : int
        The run's seed (random streams of local training).
    weight_decay : float
        Added to every client gradient (and to FedAvg's local steps).
    run_name : str
        ``"label (rule)"``, for messages.
    rounds : int
        The run's number of rounds, for messages.
    last_checkpoint : str, optional
        Path of the last checkpoint, for messages.
    """

    def __init__(self, *, t, lr, client_ids, my_ids, my_batches, my_weights, params, model, engine, comm,
                 client_data, seed, weight_decay, run_name, rounds, last_checkpoint=None):
        self.round, self.lr = t, lr
        self.client_ids, self.my_ids = client_ids, my_ids
        self.my_batches, self.my_weights = my_batches, my_weights
        self.params, self.model, self.engine, self.comm = params, model, engine, comm
        self._client_data, self._seed = client_data, seed
        self.weight_decay = weight_decay
        self.world_size = comm.world_size
        self._run_name, self._rounds, self._last_checkpoint = run_name, rounds, last_checkpoint

    def allreduce_(self, tensor):
        """Sum over ranks in place.

        Parameters
        ----------
        tensor : torch.Tensor
            Contiguous; overwritten with the sum.

        Returns
        -------
        torch.Tensor
            ``tensor``.
        """
        return self.comm.allreduce_(tensor)

    def _check(self, bad, what, diagnose):
        """Raise on every rank if any rank saw a non-finite client result.

        ``bad`` counts this rank's bad results on the device; the sum over ranks
        is the one host read; ``diagnose()`` (this rank's bad client ids) runs
        only after a failure.
        """
        flag = bad.reshape(1).to(device=self.params.device, dtype=torch.float32)
        self.comm.allreduce_(flag)
        (total,), = read_host(flag)
        if total > 0:
            bad_clients = diagnose()
            who = (f"client(s) {sorted(int(c) for c in bad_clients)}" if bad_clients
                   else "a client on another rank")
            (biggest,), = read_host(self.params.abs().max())
            raise ClientUpdateError(
                f"{self._run_name}: round {self.round + 1} of {self._rounds}: "
                f"{what} of {who} is NaN or infinite; it was rejected before reaching the server state. "
                f"Largest weight magnitude: {biggest:.3g} (a huge value means the run diverged: lower "
                f"train.lr); otherwise check the client's data. Last good checkpoint: "
                f"{self._last_checkpoint or 'none (no checkpoint was written)'}")

    def _bad_in_shard(self):
        """Clients of this rank whose gradient is non-finite (diagnosis after a bad sum)."""
        grads = self.engine.gradients(self.model, self.params, self.my_batches)
        return _bad_rows(self.my_ids, grads)

    def gradient_sum(self):
        """This rank's weighted gradient sum (weight decay added once, on rank 0).

        Returns
        -------
        torch.Tensor
            A d-vector.

        Raises
        ------
        ClientUpdateError
            A client's gradient (on any rank) is NaN or infinite.
        """
        if len(self.my_ids):
            g = self.engine.gradient_sum(self.model, self.params, self.my_batches, self.my_weights)
        else:
            g = torch.zeros_like(self.params)
        bad = ~torch.isfinite(g).all()
        self._check(bad, "the gradient",
                    lambda: (self._bad_in_shard() or list(self.my_ids)) if read_host(bad)[0][0] else [])
        if self.weight_decay and self.comm.rank == 0:
            g = g + self.weight_decay * self.params
        return g

    def gradients(self):
        """Per-client gradients of this rank's clients, weight decay included.

        Returns
        -------
        torch.Tensor
            Shape (n, d).

        Raises
        ------
        ClientUpdateError
            A client's gradient (on any rank) is NaN or infinite.
        """
        if len(self.my_ids):
            grads = self.engine.gradients(self.model, self.params, self.my_batches)
        else:
            grads = torch.zeros((0, self.params.shape[0]), device=self.params.device)
        self._check((~torch.isfinite(grads).all(dim=1)).sum(), "the gradient",
                    lambda: _bad_rows(self.my_ids, grads))
        if self.weight_decay:
            grads = grads + self.weight_decay * self.params
        return grads

    def local_train(self, epochs, batch_size):
        """FedAvg local SGD of this rank's clients on all their data.

        Parameters
        ----------
        epochs : int
            Local epochs.
        batch_size : int or None
            Local minibatch size; None: full batch.

        Returns
        -------
        torch.Tensor
            The clients' weight changes, shape (n, d).

        Raises
        ------
        ClientUpdateError
            A client's change (on any rank) is NaN or infinite.
        """
        if not len(self.my_ids):
            return torch.zeros((0, self.params.shape[0]), device=self.params.device)
        data = [self._client_data(c) for c in self.my_ids]
        orders = [[torch.from_numpy(stream(self._seed, LOCAL_ORDER, self.round, int(c), e)
                                    .permutation(x.shape[0])).to(x.device) for e in range(epochs)]
                  for c, (x, _) in zip(self.my_ids, data)]
        deltas = self.engine.local_train(self.model, self.params, data, lr=float(self.lr), epochs=int(epochs),
                                         batch_size=batch_size, orders=orders,
                                         weight_decay=float(self.weight_decay))
        self._check((~torch.isfinite(deltas).all(dim=1)).sum(), "the local model change",
                    lambda: _bad_rows(self.my_ids, deltas))
        return deltas


def _bad_rows(ids, rows):
    """The ids whose row of ``rows`` holds a NaN or infinity (one host read)."""
    (finite,) = read_host(torch.isfinite(rows).all(dim=1))
    return [c for c, ok in zip(ids, finite) if not ok]

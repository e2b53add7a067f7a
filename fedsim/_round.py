"""The round context: what a server rule sees of one round of the simulation."""
import torch

from ._clip import clip_rows
from ._streams import LOCAL_ORDER, stream
from .errors import ClientUpdateError, NonFiniteError
from .host import read_host

__all__ = ["RoundContext"]


class RoundContext:
    """What a server rule sees of one round: client computations, all-reduce, learning rate.

    Every client result passes a finiteness check (agreed by all ranks) before
    the rule gets it, so a NaN update raises :class:`ClientUpdateError` before
    any server state changes.

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
        Added to every client gradient (and to FedAvg's local steps); the caller applies
        ``train.weight_decay_placement`` ("client": wd/W per client, the reference code's).
    clip_norm : float, optional
        Clip each client's loss gradient to this L2 norm (before weight decay and compression).
    local_augment : callable, optional
        ``local_augment(c) -> fn(x, epoch)`` or None: client ``c``'s augmentation in FedAvg's local epochs.
    run_name : str
        ``"label (rule)"``, for messages.
    rounds : int
        The run's number of rounds, for messages.
    last_checkpoint : str, optional
        Path of the last checkpoint, for messages.
    """

    def __init__(self, *, t, lr, client_ids, my_ids, my_batches, my_weights, params, model, engine, comm,
                 client_data, seed, weight_decay, run_name, rounds, last_checkpoint=None, clip_norm=None,
                 local_augment=None):
        self.round, self.lr = t, lr
        self.client_ids, self.my_ids = client_ids, my_ids
        self.my_batches, self.my_weights = my_batches, my_weights
        self.params, self.model, self.engine, self.comm = params, model, engine, comm
        self._client_data, self._seed = client_data, seed
        self.weight_decay, self.clip_norm, self._local_augment = weight_decay, clip_norm, local_augment
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

    def _check(self, bad, what, diagnose, decay_bad=None):
        """Raise on every rank if any rank saw a non-finite client result or weight-decay term.

        ``bad`` counts this rank's bad client results on the device and
        ``decay_bad`` says whether adding the weight decay made the result
        non-finite; both are summed over ranks in one all-reduce and read back in
        one host read.  ``diagnose()`` (this rank's bad client ids) runs only
        after a failure.
        """
        zero = torch.zeros((), device=self.params.device)
        flags = torch.stack([bad.reshape(()).to(device=self.params.device, dtype=torch.float32),
                             zero if decay_bad is None else decay_bad.reshape(()).to(self.params.device,
                                                                                     torch.float32)])
        self.comm.allreduce_(flags)
        ((total, decay),) = read_host(flags)
        if total > 0:
            bad_clients = diagnose()
            who = (f"client(s) {sorted(int(c) for c in bad_clients)}" if bad_clients
                   else "a client on another rank")
            ((biggest,),) = read_host(self.params.abs().max())
            raise ClientUpdateError(
                f"{self._run_name}: round {self.round + 1} of {self._rounds}: "
                f"{what} of {who} is NaN or infinite; it was rejected before reaching the server state. "
                f"Largest weight magnitude: {biggest:.3g} (a huge value means the run diverged: lower "
                f"train.lr); otherwise check the client's data. Last good checkpoint: "
                f"{self._last_checkpoint or 'none (no checkpoint was written)'}")
        if decay > 0:
            raise NonFiniteError(
                f"{self._run_name}: round {self.round + 1} of {self._rounds}: the gradient plus "
                f"train.weight_decay ({self.weight_decay:g}) times the weights is NaN or infinite; it was "
                f"rejected before reaching the server state. Lower train.weight_decay. Last good "
                f"checkpoint: {self._last_checkpoint or 'none (no checkpoint was written)'}")

    def _bad_in_shard(self):
        """Clients of this rank whose gradient is non-finite (diagnosis after a bad sum)."""
        return _bad_rows(self.my_ids, self.engine.gradients(self.model, self.params, self.my_batches))

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
        NonFiniteError
            The weight-decay term made the sum NaN or infinite.
        """
        if self.clip_norm is not None:
            # Clipping is per client, so the one backward over the round's union batch (exact only
            # for the plain sum) gives way to per-client gradients: an (n, d) stack.
            grads, bad = self._loss_gradients()
            g = self.my_weights.to(grads.dtype) @ grads if grads.shape[0] else torch.zeros_like(self.params)
            diagnose = lambda: _bad_rows(self.my_ids, grads)  # noqa: E731
        else:
            if len(self.my_ids):
                g = self.engine.gradient_sum(self.model, self.params, self.my_batches, self.my_weights)
            else:
                g = torch.zeros_like(self.params)
            bad = ~torch.isfinite(g).all()
            diagnose = lambda: (self._bad_in_shard() or list(self.my_ids)) if read_host(bad)[0][0] else []  # noqa: E731
        if self.weight_decay and self.comm.rank == 0:
            g = g + self.weight_decay * self.params
        # The decay term can overflow on its own: checked in the same collective and host read.
        self._check(bad, "the gradient", diagnose, decay_bad=~torch.isfinite(g).all())
        return g

    def gradients(self):
        """Per-client gradients of this rank's clients (clipped first with ``clip_norm``), weight decay included.

        Returns
        -------
        torch.Tensor
            Shape (n, d).

        Raises
        ------
        ClientUpdateError
            A client's gradient (on any rank) is NaN or infinite.
        NonFiniteError
            The weight-decay term made a gradient NaN or infinite.
        """
        grads, bad = self._loss_gradients()
        decay_bad = None
        if self.weight_decay:
            grads = grads + self.weight_decay * self.params
            decay_bad = ~torch.isfinite(grads).all()
        self._check(bad, "the gradient", lambda: _bad_rows(self.my_ids, grads), decay_bad=decay_bad)
        return grads

    def _loss_gradients(self):
        """Per-client loss gradients of this rank's clients (clipped if asked; unchecked), shape (n, d),
        and the number of non-finite ones on the device."""
        if len(self.my_ids):
            grads = self.engine.gradients(self.model, self.params, self.my_batches)
        else:
            grads = torch.zeros((0, self.params.shape[0]), device=self.params.device)
        bad = (~torch.isfinite(grads).all(dim=1)).sum()
        if self.clip_norm is not None:
            grads = clip_rows(grads, self.clip_norm)
        return grads, bad

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
        extra = {}
        if self._local_augment is not None:
            augments = [self._local_augment(c) for c in self.my_ids]
            if augments[0] is not None:
                extra["augments"] = augments
        if self.clip_norm is not None:
            extra["clip_norm"] = float(self.clip_norm)
        deltas = self.engine.local_train(self.model, self.params, data, lr=float(self.lr), epochs=int(epochs),
                                         batch_size=batch_size, orders=orders,
                                         weight_decay=float(self.weight_decay), **extra)
        self._check((~torch.isfinite(deltas).all(dim=1)).sum(), "the local model change",
                    lambda: _bad_rows(self.my_ids, deltas))
        return deltas


def _bad_rows(ids, rows):
    """The ids whose row of ``rows`` holds a NaN or infinity (one host read)."""
    (finite,) = read_host(torch.isfinite(rows).all(dim=1))
    return [c for c, ok in zip(ids, finite) if not ok]

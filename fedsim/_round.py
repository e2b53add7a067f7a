"""The round context: what a server rule sees of one round of the simulation."""
import numpy as np
import torch

from ._clip import clip_rows
from .errors import ClientUpdateError

__all__ = ["RoundContext"]


class RoundContext:
    """What a server rule sees of one round: client computations, all-reduce, learning rate.

    Every client result passes a finiteness check (agreed by all ranks) before
    the rule gets it, so a NaN update raises :class:`ClientUpdateError` before
    any server state changes.
    """

    def __init__(self, sim, t, lr, client_ids, my_ids, my_batches, my_weights):
        self.sim, self.round, self.lr = sim, t, lr
        self.client_ids, self.my_ids = client_ids, my_ids
        self.my_batches, self.my_weights = my_batches, my_weights
        self.params = sim.params
        tr = sim.spec.train
        # "aggregate": wd w enters the round's update once (added to the sum, or to each client's
        # vector of a per-client rule, whose weights sum to 1). "client" (the reference code):
        # wd/W w on each client's gradient, after clipping; summed, that is (wd/W) w once.
        self.weight_decay = tr.weight_decay / len(client_ids) if tr.weight_decay_placement == "client" \
            else tr.weight_decay
        self.clip_norm = sim.spec.train.clip_norm
        self.world_size = sim.comm.world_size

    def allreduce_(self, tensor):
        """Sum over ranks in place; returns the tensor."""
        return self.sim.comm.allreduce_(tensor)

    def _check(self, bad_clients, what):
        """Raise on every rank if any rank saw a non-finite client result."""
        flag = torch.tensor([float(len(bad_clients))], device=self.params.device)
        self.sim.comm.allreduce_(flag)
        if float(flag.item()) > 0:
            sim = self.sim
            who = (f"client(s) {sorted(int(c) for c in bad_clients)}" if bad_clients
                   else "a client on another rank")
            biggest = float(self.params.abs().max())
            raise ClientUpdateError(
                f"{sim.spec.label} ({sim.spec.rule.name}): round {self.round + 1} of {sim.spec.train.rounds}: "
                f"{what} of {who} is NaN or infinite; it was rejected before reaching the server state. "
                f"Largest weight magnitude: {biggest:.3g} (a huge value means the run diverged: lower "
                f"train.lr); otherwise check the client's data. Last good checkpoint: "
                f"{sim.last_checkpoint or 'none (no checkpoint was written)'}")

    def _bad_in_shard(self):
        """Clients of this rank whose gradient is non-finite (diagnosis after a bad sum)."""
        grads = self.sim.engine.gradients(self.sim.model, self.params, self.my_batches)
        return [c for c, g in zip(self.my_ids, grads) if not bool(torch.isfinite(g).all())]

    def gradient_sum(self):
        """This rank's weighted gradient sum (weight decay added once, on rank 0).

        With ``train.clip_norm`` each client's gradient is clipped before the sum,
        so the engine's one forward/backward over the round's union batch (exact
        only for the plain sum) gives way to per-client gradients: a ``(n, d)``
        stack and per-client backward passes (``vmap`` in the vmap engine).
        """
        sim = self.sim
        if self.clip_norm is not None:
            grads = self._clipped_gradients()
            g = self.my_weights.to(grads.dtype) @ grads if grads.shape[0] else torch.zeros_like(self.params)
        else:
            if len(self.my_ids):
                g = sim.engine.gradient_sum(sim.model, self.params, self.my_batches, self.my_weights)
            else:
                g = torch.zeros_like(self.params)
            bad = [] if bool(torch.isfinite(g).all()) else (self._bad_in_shard() or list(self.my_ids))
            self._check(bad, "the gradient")
        if self.weight_decay and sim.comm.rank == 0:
            g = g + self.weight_decay * self.params
        return g

    def _clipped_gradients(self):
        """Per-client loss gradients of this rank's clients, checked finite, clipped if asked; (n, d)."""
        sim = self.sim
        if len(self.my_ids):
            grads = sim.engine.gradients(sim.model, self.params, self.my_batches)
        else:
            grads = torch.zeros((0, self.params.shape[0]), device=self.params.device)
        finite = torch.isfinite(grads).all(dim=1).tolist()
        self._check([c for c, ok in zip(self.my_ids, finite) if not ok], "the gradient")
        if self.clip_norm is not None:
            grads = clip_rows(grads, self.clip_norm)
        return grads

    def gradients(self):
        """Per-client gradients of this rank's clients (clipped first with train.clip_norm), weight
        decay included, shape (n, d)."""
        grads = self._clipped_gradients()
        if self.weight_decay:
            grads = grads + self.weight_decay * self.params
        return grads

    def local_train(self, epochs, batch_size):
        """FedAvg local SGD of this rank's clients on all their data; returns deltas (n, d)."""
        sim = self.sim
        if not len(self.my_ids):
            return torch.zeros((0, self.params.shape[0]), device=self.params.device)
        data = [sim.client_data(c) for c in self.my_ids]
        orders = [[torch.from_numpy(np.random.default_rng([sim.seed, 3, self.round, int(c), e])
                                    .permutation(x.shape[0])).to(x.device) for e in range(epochs)]
                  for c, (x, _) in zip(self.my_ids, data)]
        augments = [sim.local_augment(self.round, c) for c in self.my_ids]
        extra = {} if augments[0] is None else {"augments": augments}
        if self.clip_norm is not None:
            extra["clip_norm"] = float(self.clip_norm)
        deltas = sim.engine.local_train(sim.model, self.params, data, lr=float(self.lr), epochs=int(epochs),
                                        batch_size=batch_size, orders=orders,
                                        weight_decay=float(self.weight_decay), **extra)
        finite = torch.isfinite(deltas).all(dim=1).tolist()
        self._check([c for c, ok in zip(self.my_ids, finite) if not ok], "the local model change")
        return deltas

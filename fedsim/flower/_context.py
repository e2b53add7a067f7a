"""The round context of a Flower round: the clients' uploads where fedsim has client computations."""
import numpy as np

from ..errors import ConfigError

__all__ = ["UploadedRound"]


class UploadedRound:
    """What a server rule sees of one Flower round: the clients' uploads instead of their computations.

    It plays :class:`fedsim.RoundContext`'s role with the part of that surface the rules
    use: ``round``, ``lr``, ``client_ids``/``my_ids``, ``my_weights`` (sum to 1),
    ``world_size`` (1), ``allreduce_`` (identity), ``gradient_sum()``, ``gradients()`` and
    ``local_train(epochs, batch_size)``, all answered from the uploads (weight decay is
    already in the clients' gradients).

    Parameters
    ----------
    t : int
        0-based round.
    lr : float
    client_ids : sequence of int
        The replying nodes.
    weights : torch.Tensor
        Aggregation weights, shape (n,), summing to 1.
    dense : torch.Tensor
        The uploads as dense d-vectors, shape (n, d).
    kind : {"gradient", "topk", "delta"}
        What ``dense`` holds.
    local_setup : tuple, optional
        ``(epochs, batch_size)`` the clients were told (FedAvg).
    """

    world_size = 1
    weight_decay = 0.0

    def __init__(self, t, lr, client_ids, weights, dense, kind, local_setup=None):
        self.round, self.lr = t, lr
        self.client_ids = self.my_ids = np.asarray(client_ids, dtype=np.int64)
        self.my_weights, self._dense, self._kind = weights, dense, kind
        self._local_setup = local_setup

    def allreduce_(self, tensor):
        """One server: nothing to reduce."""
        return tensor

    def _need(self, *kinds):
        """Raise unless the clients uploaded one of ``kinds``."""
        if self._kind not in kinds:
            raise ConfigError(f"the rule asked for {kinds} but the clients uploaded {self._kind!r}")

    def gradient_sum(self):
        """The weighted sum of the clients' gradients."""
        self._need("gradient")
        return self.my_weights @ self._dense

    def gradients(self):
        """The clients' gradients (dense, or their top-k with zeros elsewhere), shape (n, d)."""
        self._need("gradient", "topk")
        return self._dense

    def local_train(self, epochs, batch_size):
        """The clients' weight changes after the local training they were told to run."""
        self._need("delta")
        if (epochs, batch_size) != self._local_setup:
            raise ConfigError(f"the rule asked for local training {(epochs, batch_size)} but the clients "
                              f"ran {self._local_setup}")
        return self._dense

"""Communicators: how the ranks of one simulation share a round's clients and sum their results.

The simulator only needs: ``rank``, ``world_size``, ``is_writer``,
``shard_bounds(n)`` (this rank's contiguous part of the round's clients) and
``allreduce_(tensor)`` (in-place sum over ranks, returns it).  Every rank
draws the same clients and batches (randomness comes from seed and round,
never from the rank) and applies the same server step to the summed
aggregate, so N ranks follow the trajectory of one process.
``fedsim.distributed.TorchDistributedCommunicator`` implements this over
torch.distributed.
"""

__all__ = ["Communicator", "LocalCommunicator"]


class Communicator:
    """Interface (and contiguous sharding shared by implementations)."""

    rank = 0
    world_size = 1

    @property
    def is_writer(self):
        """Rank 0 writes checkpoints, metrics and reports.

        Returns
        -------
        bool
        """
        return self.rank == 0

    def shard_bounds(self, n):
        """``(lo, hi)`` of this rank's slice of ``n`` items.

        Parameters
        ----------
        n : int
            Number of items (the round's clients).

        Returns
        -------
        tuple of int
        """
        return (n * self.rank) // self.world_size, (n * (self.rank + 1)) // self.world_size

    def allreduce_(self, tensor):
        """Sum ``tensor`` over ranks in place; returns it.

        Parameters
        ----------
        tensor : torch.Tensor
            Contiguous; overwritten with the sum.

        Returns
        -------
        torch.Tensor
            ``tensor``.

        Raises
        ------
        NotImplementedError
            In the interface.
        """
        raise NotImplementedError

    def barrier(self):
        """Wait for every rank."""


class LocalCommunicator(Communicator):
    """One process, world size 1: sharding keeps everything, all-reduce is a no-op."""

    def allreduce_(self, tensor):
        """Nothing to sum with: returns ``tensor`` unchanged.

        Parameters
        ----------
        tensor : torch.Tensor

        Returns
        -------
        torch.Tensor
            ``tensor``.
        """
        return tensor

    def __repr__(self):
        return "LocalCommunicator()"

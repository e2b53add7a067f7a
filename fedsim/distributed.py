"""Run one simulation over several processes with torch.distributed.

Each rank simulates a shard of every round's clients; the partial aggregates
(sketch tables, or dense vectors for dense rules) are summed with one
all-reduce, and every rank applies the same server step, so N ranks follow the
trajectory of one process (up to float summation order).  Gloo on CPU, NCCL on
GPU.  Launch with torchrun::

    torchrun --nproc-per-node 2 -m fedsim.distributed run --config my.toml

A rank that dies must not leave the others hanging: the process group gets a
timeout, every collective is wrapped so a failure names the rank, the
collective and the likely cause, and a watchdog thread ends a process stuck in
a collective for longer than the timeout (NCCL may not notice a dead peer).
"""
from __future__ import annotations

import datetime
import hashlib
import os
import sys
import threading
import time

import numpy as np

from .comm import Communicator
from .errors import ConfigError, RankFailure

__all__ = ["TorchDistributedCommunicator", "RankFailure", "RankMismatch", "main", "run_distributed"]

WATCHDOG_EXIT_CODE = 86


class RankMismatch(RankFailure):
    """The ranks disagree (e.g. on the configuration); the group itself is healthy."""


def _env_int(name, default=None):
    """An integer environment variable set by torchrun (or by hand)."""
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RankFailure(f"environment variable {name} is not set: launch with torchrun "
                              f"(torchrun --nproc-per-node N -m fedsim.distributed run ...) or set "
                              f"RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise RankFailure(f"environment variable {name}={value!r} is not an integer") from exc


class _Watchdog:
    """Ends the process when one collective runs longer than its limit."""

    def __init__(self, limit_s, rank):
        self.limit_s, self.rank = limit_s, rank
        self._since, self._what = None, None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fedsim-watchdog", daemon=True)
        self._thread.start()

    def enter(self, what):
        """Mark the start of a collective."""
        with self._lock:
            self._since, self._what = time.monotonic(), what

    def leave(self):
        """Mark its end."""
        with self._lock:
            self._since, self._what = None, None

    def stop(self):
        """Stop watching."""
        self._stop.set()

    def _watch(self):
        """Poll; on overrun print a clear message and exit without cleanup (it would hang)."""
        tick = min(1.0, self.limit_s / 4)
        while not self._stop.wait(tick):
            with self._lock:
                since, what = self._since, self._what
            if since is not None and time.monotonic() - since > self.limit_s:
                sys.stderr.write(
                    f"\nfedsim.distributed: rank {self.rank}: {what} has waited more than "
                    f"{self.limit_s:.0f} s; another rank probably died or stalled. Exiting.\n")
                sys.stderr.flush()
                os._exit(WATCHDOG_EXIT_CODE)


class TorchDistributedCommunicator(Communicator):
    """The simulator's communicator over a torch.distributed process group.

    Parameters
    ----------
    backend : {"gloo", "nccl"}, optional
        Default: NCCL when CUDA is usable, else Gloo.
    timeout_s : float, default 120
        Limit for one collective (passed to ``init_process_group``); the
        watchdog ends a process stuck longer than ``timeout_s + grace_s``.
    grace_s : float, default 10
    init_method : str, default "env://"
        Where ranks meet; torchrun sets the environment for ``env://``.

    Notes
    -----
    Rank, world size and local rank come from ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK``.  With NCCL each rank uses ``cuda:LOCAL_RANK``.
    """

    def __init__(self, backend=None, *, timeout_s=120.0, grace_s=10.0, init_method="env://"):
        import torch
        import torch.distributed as dist

        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ConfigError(f"timeout_s must be a positive number, got {timeout_s!r}")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend not in ("gloo", "nccl"):
            raise ConfigError(f"unknown torch.distributed backend {backend!r}; choose 'gloo' or 'nccl'")
        if backend == "nccl" and not torch.cuda.is_available():
            raise RankFailure("backend 'nccl' needs CUDA; use backend 'gloo' on CPU")
        self._dist = dist
        self.backend = backend
        self.timeout_s = float(timeout_s)
        self.local_rank = _env_int("LOCAL_RANK", 0)
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            kwargs = {}
            if backend == "nccl":
                kwargs["device_id"] = torch.device("cuda", self.local_rank)
            try:
                dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                        timeout=datetime.timedelta(seconds=self.timeout_s), **kwargs)
            except Exception as exc:
                raise RankFailure(f"rank {rank}: could not join the process group of {world} ranks "
                                  f"within {self.timeout_s:.0f} s ({type(exc).__name__}: {exc})") from exc
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")
        self._count = 0
        self._watchdog = _Watchdog(self.timeout_s + grace_s, self.rank)

    # ---------------------------------------------------------------- Communicator
    # is_writer (rank 0) and shard_bounds() come from fedsim.comm.Communicator.

    def allreduce_(self, value):
        """Sum ``value`` over all ranks, in place, and return it.

        Accepts a torch tensor, a NumPy array (shared with torch, no copy), a
        CuPy array (through DLPack, no copy) or a CountSketch (its table).

        Parameters
        ----------
        value : torch.Tensor, numpy.ndarray, cupy.ndarray or CountSketch
            Contiguous and writable.

        Returns
        -------
        object
            ``value``.

        Raises
        ------
        ConfigError
            Not contiguous, read-only, or of an unsupported type.
        RankFailure
            The collective failed or timed out.
        """
        import torch

        table_of = getattr(value, "table", None)
        target = table_of if table_of is not None and not isinstance(value, torch.Tensor) else value
        tensor = self._as_tensor(target)
        if not tensor.is_contiguous():
            # A local mistake, not a peer's failure: say so before any collective starts.
            raise ConfigError("allreduce_ needs a contiguous tensor or array (in-place sum)")
        staged = tensor
        if self.backend == "nccl" and tensor.device.type != "cuda":
            staged = tensor.to(self.device)
        elif self.backend == "gloo" and tensor.device.type != "cpu":
            staged = tensor.cpu()
        self._run("all_reduce", lambda: self._dist.all_reduce(staged, op=self._dist.ReduceOp.SUM))
        if staged is not tensor:
            tensor.copy_(staged)
        return value

    # ------------------------------------------------------------------- helpers
    def _as_tensor(self, value):
        """A torch view of an array (no copy)."""
        import torch

        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, np.ndarray):
            if not value.flags.writeable:
                raise ConfigError("cannot all-reduce into a read-only NumPy array")
            return torch.from_numpy(value)
        if hasattr(value, "__dlpack__"):
            return torch.from_dlpack(value)
        raise ConfigError(f"cannot all-reduce a {type(value).__name__}; give a tensor or an array")

    def _run(self, what, fn):
        """Run one collective under the watchdog; turn failures into RankFailure."""
        self._count += 1
        label = f"{what} #{self._count}"
        self._watchdog.enter(label)
        try:
            fn()
        except Exception as exc:
            raise RankFailure(
                f"rank {self.rank}/{self.world_size}: {label} failed; another rank probably died or "
                f"stalled (timeout {self.timeout_s:.0f} s). Cause: {type(exc).__name__}: {exc}") from exc
        finally:
            self._watchdog.leave()

    def broadcast_(self, tensor, src=0):
        """Broadcast a tensor from ``src`` to every rank, in place.

        Parameters
        ----------
        tensor : torch.Tensor
        src : int, default 0

        Returns
        -------
        torch.Tensor
            ``tensor``.
        """
        self._run("broadcast", lambda: self._dist.broadcast(tensor, src=src))
        return tensor

    def barrier(self):
        """Wait for every rank."""
        import torch

        # A tiny all-reduce instead of dist.barrier: it honours the timeout on every backend.
        self.allreduce_(torch.zeros(1, device=self.device))

    def check_same(self, data, what):
        """Raise on every rank unless all ranks pass the same bytes (e.g. a config hash).

        Parameters
        ----------
        data : str or bytes
        what : str
            Named in the message.

        Raises
        ------
        RankMismatch
            The ranks passed different data.
        """
        import torch

        digest = hashlib.sha256(data if isinstance(data, bytes) else str(data).encode()).digest()[:8]
        mine = torch.tensor(np.frombuffer(digest, dtype=np.int64).copy(), device=self.device)
        low = mine.clone()
        high = mine.clone()
        self._run("check_same(min)", lambda: self._dist.all_reduce(low, op=self._dist.ReduceOp.MIN))
        self._run("check_same(max)", lambda: self._dist.all_reduce(high, op=self._dist.ReduceOp.MAX))
        if not bool(torch.equal(low, high)):
            raise RankMismatch(f"rank {self.rank}: the ranks disagree on {what}; every rank must run the "
                              f"same configuration")

    def close(self, sync=False):
        """Leave the process group (if this object created it) and stop the watchdog.

        ``sync=True`` first waits for every rank (use it when all ranks finished
        normally, never after an error that only some ranks saw).

        Parameters
        ----------
        sync : bool, default False
        """
        if self._owns_group and self._dist.is_initialized():
            if sync:
                # A rank that tears down and exits while a peer is still busy (rank 0
                # writes the reports) was seen to make gloo abort that peer.
                self.barrier()
            # Teardown waits on peers too: keep the watchdog on it.
            self._watchdog.enter("destroy_process_group")
            self._dist.destroy_process_group()
            self._watchdog.leave()
        self._watchdog.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return (f"TorchDistributedCommunicator(backend={self.backend!r}, rank={self.rank}, "
                f"world_size={self.world_size})")


def _pre_parser():
    """Options of the distributed launcher itself (the rest are ``fedsim run``'s)."""
    import argparse

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--backend", choices=("gloo", "nccl"), default=None,
                   help="torch.distributed backend (default: nccl for train.device cuda, else gloo)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds one collective may take before the ranks give up (default 120)")
    return p


USAGE = """usage: torchrun --nproc-per-node N -m fedsim.distributed run [--backend gloo|nccl] [--timeout S]
                                                 [fedsim run options: --config, --set, ...]

Every rank simulates a shard of each round's clients; results are summed with one all-reduce and
every rank applies the same server step.  Rank 0 writes metrics, checkpoints and reports.  With
train.device = "cuda" each rank uses cuda:LOCAL_RANK (NCCL).  Checkpoints resume on any number of
ranks (and in a plain `fedsim run --resume`)."""


def _say(comm, msg):
    """Print on rank 0 only (or everywhere before the group exists)."""
    if comm is None or comm.is_writer:
        print(msg, file=sys.stderr, flush=True)


def run_distributed(argv):
    """Parse, join the process group, run the experiment; returns the exit status.

    Parameters
    ----------
    argv : list of str
        The launcher's options and ``fedsim run``'s.

    Returns
    -------
    int
        0 ok, 1 a run diverged, 2 a configuration error, 3 a rank failure or mismatch.

    Raises
    ------
    RankFailure
        Only before the group exists (e.g. a missing torchrun variable); later ones end the process.
    """
    from .cli import build_parser, config_from_args
    from sketchlib import SketchError

    from .errors import FedsimError

    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    mine, rest = _pre_parser().parse_known_args(argv)
    if not rest or rest[0] != "run":
        rest = ["run"] + rest
    args = build_parser().parse_args(rest)
    comm = None
    try:
        cfg = config_from_args(args)
        device = cfg.train.device
        backend = mine.backend or ("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda:") and _env_int("WORLD_SIZE", 1) > 1:
            raise RankFailure(f"train.device = {device!r} pins every rank to one GPU; use 'cuda' "
                              f"(each rank then takes cuda:LOCAL_RANK)")
        if device.startswith("cuda"):
            _pick_gpu()
        comm = TorchDistributedCommunicator(backend, timeout_s=mine.timeout)
        only = [s.strip() for s in args.only.split(",")] if args.only else None
        specs = cfg.runs(only)
        comm.check_same(",".join(s.config_hash() for s in specs), "the configuration")
        _say(comm, f"fedsim.distributed: {comm.world_size} ranks, backend {comm.backend}, "
                   f"device {device}, {len(specs)} run(s)")
        if args.resume:
            _check_resume_files(comm, cfg, specs, args.out)
        from .simulator import run_experiment

        exp = run_experiment(cfg, only=only, out_dir=args.out, resume=args.resume, comm=comm,
                             log=lambda msg: _say(comm, msg))
        if comm.is_writer:
            from .report import format_table
            print(format_table(exp.runs, exp.provenance), flush=True)
    except RankMismatch as exc:
        print(f"fedsim.distributed: error: {exc}", file=sys.stderr, flush=True)
        _close(comm)
        return 3
    except RankFailure as exc:
        print(f"fedsim.distributed: error: {exc}", file=sys.stderr, flush=True)
        _abandon(comm)
    except (FedsimError, SketchError) as exc:
        _say(comm, f"fedsim: error: {exc}")
        _close(comm)
        return 2
    try:
        _close(comm, sync=True)
    except RankFailure as exc:
        print(f"fedsim.distributed: error: {exc}", file=sys.stderr, flush=True)
        _abandon(comm)
    return 0 if all(r.status == "ok" for r in exp.runs) else 1


def _pick_gpu():
    """Make cuda:LOCAL_RANK the current device (whatever the backend), so that "cuda" means it."""
    import torch

    if not torch.cuda.is_available():
        return  # the simulator says clearly that train.device = "cuda" needs a GPU
    local, count = _env_int("LOCAL_RANK", 0), torch.cuda.device_count()
    if local >= count:
        raise RankFailure(f"LOCAL_RANK = {local} but this machine shows {count} CUDA device(s); "
                          f"start at most {count} ranks per machine (--nproc-per-node {count})")
    torch.cuda.set_device(local)


def _check_resume_files(comm, cfg, specs, out):
    """Every rank must see the same checkpoints: rank 0 writes them, all ranks read them.

    Without a shared output folder some ranks would resume and others start over,
    and their trajectories would silently part; refuse instead.
    """
    from .layout import CHECKPOINT_NAME, SUMMARY_NAME, experiment_dir, metrics_name, run_dir

    root = experiment_dir(cfg.output, out)
    seen = []
    for spec in specs:
        # The metrics too: a damaged metrics file makes --resume continue a finished run (all ranks must).
        for name in (SUMMARY_NAME, CHECKPOINT_NAME, metrics_name("csv"), metrics_name("jsonl")):
            path = run_dir(root, spec.label) / name
            seen.append(hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-")
    comm.check_same(",".join(seen), f"the checkpoints under {root} (--resume needs one output folder "
                                    f"that every rank reads, e.g. on a shared filesystem)")


def _close(comm, sync=False):
    """Leave the group normally."""
    if comm is not None:
        comm.close(sync=sync)


def _abandon(comm):
    """After a failed collective the group is unusable: skip the teardown (destroying a
    group with a dead peer can block or abort) and end the process with status 3."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(3)


def main(argv=None):
    """``python -m fedsim.distributed run [options]``, launched by torchrun.

    Parameters
    ----------
    argv : list of str, optional
        Default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status (see :func:`run_distributed`).
    """
    return run_distributed(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    code = main()
    # Everything is written and closed by now.  Skipping the interpreter's teardown avoids
    # C++ destructors of torch/gloo worker threads racing at exit, seen to abort a rank
    # ("terminate called without an active exception") after a successful run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

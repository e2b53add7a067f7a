"""The round loop: sample clients, compute their updates, apply a server rule, count bytes.

Public entry points: :class:`Simulation` (one run of a :class:`~fedsim.config.RunSpec`)
and :func:`run_experiment` (every run of a :class:`~fedsim.config.Config`, with
results, table and plots).  Randomness comes from ``(seed, round, client)`` only
(client sampling, batches, FedAvg's sample orders), never from the rank or from
an evolving generator, so N ranks of a distributed run draw the same clients and
a resumed run draws what the uninterrupted one would have drawn.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call
from torch.nn import functional as F

from adapters.torch import flatten_params, param_views
from sketchlib import SketchError

from ._atomic import atomic_write_bytes, atomic_write_text
from ._augment import augment, augment_key
from ._fault import fault_hook
from ._flat import fixed_tensors
from ._lock import OutputLock
from ._provenance import collect, finish
from ._loss import per_sample_cross_entropy
from ._schedule import learning_rate
from ._streams import AUGMENTATION, BATCH_SELECTION, CLIENT_SAMPLING, EPOCH_ORDER, stream
from .accounting import Accountant, reference_bytes
from .checkpoint import load_checkpoint, save_checkpoint
from .clients import make_engine
from .comm import Communicator, LocalCommunicator
from .errors import (ConfigError, DataFileMissing, MissingDependency, NonFiniteError, OutputFolderBusy,
                     RunFileError)
from .host import read_host
from ._round import RoundContext
from .layout import (CHECKPOINT_NAME, FINAL_PARAMS_NAME, PROVENANCE_NAME, SUMMARY_NAME, TENSORBOARD_DIR,
                     experiment_dir, run_dir)
from .rules import make_rule

__all__ = ["Simulation", "RunResult", "ExperimentResult", "run_experiment", "Communicator",
           "LocalCommunicator", "RoundContext", "is_synthetic"]

_log = logging.getLogger("fedsim")

_EVAL_BATCH = 2048


@dataclass
class RunResult:
    """Outcome of one run (what the table, results.csv and the plots show)."""

    label: str
    group: str
    rule: str
    status: str  # "ok" or "diverged" (weights or a client update became NaN/inf; see message)
    message: str
    rounds_done: int
    final_acc: float
    final_loss: float
    up_bytes: int
    down_bytes: int
    ref_up_bytes: int
    ref_down_bytes: int
    seconds: float
    d: int
    config_hash: str
    dataset: str = ""  # the dataset actually used (a fallback's name when one was used)
    synthetic: bool = False  # trained and evaluated on generated data, not the real files
    history: list = field(default_factory=list, repr=False)

    @property
    def compression(self):
        """Overall compression: reference bytes / this run's bytes, up and down together.

        Returns
        -------
        float
        """
        total = self.up_bytes + self.down_bytes
        return (self.ref_up_bytes + self.ref_down_bytes) / total if total else float("nan")

    @property
    def up_compression(self):
        """Upload-only compression.

        Returns
        -------
        float
        """
        return self.ref_up_bytes / self.up_bytes if self.up_bytes else float("nan")

    @property
    def down_compression(self):
        """Download-only compression.

        Returns
        -------
        float
        """
        return self.ref_down_bytes / self.down_bytes if self.down_bytes else float("inf")

    def summary(self):
        """A flat dict (no history) for JSON/CSV.

        Returns
        -------
        dict
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "history"}
        out.update(compression=self.compression, up_compression=self.up_compression,
                   down_compression=self.down_compression)
        return out


@dataclass
class ExperimentResult:
    """All runs of one experiment and where their files are."""

    runs: list
    out_dir: Path | None
    provenance: dict | None = None  # what ran (fedsim._provenance.collect), with start and end times


class Simulation:
    """One federated run: data, model, rule, accounting, checkpoints, metrics.

    Parameters
    ----------
    spec : RunSpec
        The resolved run (see :meth:`fedsim.config.Config.runs`).
    dataset : fedsim.data.Dataset, optional
        Use this dataset instead of loading ``spec.data.dataset``.
    comm : Communicator, optional
        Default :class:`LocalCommunicator` (one process).
    out_dir : str or Path, optional
        Folder for metrics, checkpoints and the final model; None writes nothing.
    progress : bool, default False
        Show a tqdm bar on stderr (rank 0 only).
    """

    def __init__(self, spec, *, dataset=None, comm=None, out_dir=None, progress=False):
        from .data import partition
        from .models import build_model

        self.spec, self.comm = spec, comm or LocalCommunicator()
        tr, dc = spec.train, spec.data
        self.seed = tr.seed
        if tr.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train.device = {tr.device!r} but torch sees no CUDA device; use 'cpu'")
        self.device = torch.device(tr.device)
        if tr.threads is not None:
            # Tiny models on a busy CPU run far faster on one thread than on contended ones.
            torch.set_num_threads(tr.threads)
        if dataset is None:
            dataset = load_run_dataset(dc, tr.seed)
        self.dataset = dataset
        parts = partition(dataset.sample_labels, dc.num_clients, dc.partition, seed=tr.seed, alpha=dc.alpha,
                          classes_per_client=dc.classes_per_client, writers=dataset.writers_train,
                          samples_per_client=dc.samples_per_client)
        self.num_clients = len(parts)
        if tr.clients_per_round > self.num_clients:
            raise ConfigError(f"train.clients_per_round = {tr.clients_per_round} exceeds the "
                              f"{self.num_clients} clients")
        if dc.augment != "none" and dataset.x_train.ndim != 4:
            raise ConfigError(f"data.augment = {dc.augment!r} needs images (N, C, H, W); dataset "
                              f"{dataset.name!r} has samples of shape {tuple(dataset.x_train.shape[1:])}")
        self.x_train = torch.as_tensor(dataset.x_train, device=self.device)
        self.y_train = torch.as_tensor(dataset.y_train, device=self.device)
        self.x_test = torch.as_tensor(dataset.x_test, device=self.device)
        self.y_test = torch.as_tensor(dataset.y_test, device=self.device)
        self.parts = [torch.as_tensor(p, dtype=torch.int64, device=self.device) for p in parts]
        torch.manual_seed(tr.seed)
        self.model = build_model(spec.model.name, dataset.input_shape, dataset.num_classes).to(self.device)
        self.params = flatten_params(self.model, trainable_only=True, dtype=torch.float32, device=self.device)
        self.d = int(self.params.shape[0])
        self.accountant = Accountant(self.d, self.num_clients, tr.rounds, device=self.device,
                                     accounting=tr.accounting)
        self.rule = make_rule(spec.rule, self.d, device=self.device, index_bytes=self.accountant.index_bytes,
                              world_size=self.comm.world_size)
        self.engine = make_engine(tr.engine, max_clients_per_chunk=tr.max_clients_per_chunk,
                                  memory_budget_mb=tr.memory_budget_mb)
        self.history = []
        self._epoch_order = None  # (epoch, permutation) cache of epoch sampling
        self.t = 0
        self.config_hash = spec.config_hash()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.last_checkpoint = None
        self.elapsed = 0.0
        self.provenance = None  # set by run(): what ran this run (or this resumed part of it)

    # ------------------------------------------------------------------ data
    def sample_clients(self, t):
        """The sorted client ids of round ``t`` (same on every rank).

        ``train.sampling = "random"``: W clients drawn from ``(seed, round)``.
        ``"epoch"`` (the reference code): epoch ``e`` is a permutation of the clients
        drawn from ``(seed, e)``, cut into ``num_clients // W`` rounds of W; the
        ``num_clients % W`` clients at its end sit that epoch out.  Both depend on
        the round alone, so resumed runs and distributed ranks agree.

        Parameters
        ----------
        t : int
            The round (0-based).

        Returns
        -------
        numpy.ndarray
        """
        w = self.spec.train.clients_per_round
        if self.spec.train.sampling == "epoch":
            epoch, slot = divmod(t, self.num_clients // w)
            if self._epoch_order is None or self._epoch_order[0] != epoch:
                self._epoch_order = (epoch, stream(self.seed, EPOCH_ORDER, epoch).permutation(self.num_clients))
            return np.sort(self._epoch_order[1][slot * w:(slot + 1) * w])
        rng = stream(self.seed, CLIENT_SAMPLING, t)
        return np.sort(rng.choice(self.num_clients, self.spec.train.clients_per_round, replace=False))

    def client_data(self, c):
        """All of client ``c``'s samples as ``(x, y)``.

        Parameters
        ----------
        c : int
            Client id.

        Returns
        -------
        tuple of torch.Tensor
        """
        idx = self.parts[int(c)]
        return self.x_train[idx], self.y_train[idx]

    def client_batch(self, t, c):
        """Client ``c``'s batch in round ``t`` (all its samples unless data.batch_size is smaller).

        Parameters
        ----------
        t : int
            The round (0-based).
        c : int
            Client id.

        Returns
        -------
        tuple of torch.Tensor
            ``(x, y)``.
        """
        idx = self.parts[int(c)]
        bs = self.spec.data.batch_size
        if bs is not None and bs < idx.shape[0]:
            sel = np.sort(stream(self.seed, BATCH_SELECTION, t, int(c)).choice(idx.shape[0], bs, replace=False))
            idx = idx[torch.from_numpy(sel).to(self.device)]
        x = self.x_train[idx]
        if self.spec.data.augment != "none":
            x = augment(self.spec.data.augment, x, augment_key(self.seed, AUGMENTATION, t, int(c)))
        return x, self.y_train[idx]

    def local_augment(self, t, c):
        """FedAvg: ``fn(x, epoch)`` augmenting client ``c``'s epoch data in round ``t`` (None: no augmentation).

        The key is ``(seed, round, client, epoch)``; a sample's draw also depends on
        its position in the epoch's order, so every local step draws afresh.
        """
        name = self.spec.data.augment
        if name == "none":
            return None
        return lambda x, epoch: augment(name, x, augment_key(self.seed, AUGMENTATION, t, int(c), epoch))

    def _weight_decay(self, clients):
        """The weight decay each client gradient gets: wd ("aggregate": it enters the update once) or
        wd/W ("client", the reference code: on each of the round's W clients, after clipping)."""
        tr = self.spec.train
        return tr.weight_decay / clients if tr.weight_decay_placement == "client" else tr.weight_decay

    def _weights(self, batches_all):
        """Client weights of the round (sum to 1): by samples or uniform."""
        if self.spec.train.weighting == "uniform":
            w = np.full(len(batches_all), 1.0 / len(batches_all))
        else:
            n = np.array([x.shape[0] for x, _ in batches_all], dtype=np.float64)
            w = n / n.sum()
        return torch.tensor(w, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------- eval
    def _forward(self, params, x):
        """Logits at ``params``."""
        return functional_call(self.model, {**param_views(self.model, params, trainable_only=True), **fixed_tensors(self.model)}, (x,))

    @torch.no_grad()
    def evaluate(self):
        """``(test loss, test accuracy)`` of the current weights, per target (a sequence has
        one target per position).

        Returns
        -------
        tuple of float
        """
        loss, correct = 0.0, 0
        for lo in range(0, self.x_test.shape[0], _EVAL_BATCH):
            x, y = self.x_test[lo:lo + _EVAL_BATCH], self.y_test[lo:lo + _EVAL_BATCH]
            logits = self._forward(self.params, x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        n = self.y_test.numel()
        return loss / n, correct / n

    @torch.no_grad()
    def _train_loss(self, batches, weights):
        """Weighted mean loss of this rank's batches, one forward (summed over ranks by the caller)."""
        if not batches:
            return torch.zeros(1, device=self.device)
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        counts = torch.tensor([b[0].shape[0] for b in batches], device=self.device)
        per_sample = torch.repeat_interleave(weights / counts.to(weights.dtype), counts)
        loss = per_sample_cross_entropy(self._forward(self.params, x), y)
        return (loss * per_sample).sum().reshape(1)

    # ------------------------------------------------------------------- round
    def step(self):
        """Run round ``self.t``; returns its metrics row.

        Returns
        -------
        dict
            The metrics row (round, lr, losses, accuracy, bytes, compression).

        Raises
        ------
        NonFiniteError
            The weights became NaN/inf (nothing is changed), or the rule met a NaN/inf
            value (a sketch refused it; the run cannot continue).
        ClientUpdateError
            A client's update was NaN/inf (nothing is changed).
        """
        t, tr = self.t, self.spec.train
        lr = learning_rate(tr.schedule, tr.lr, t, tr.rounds, tr.warmup)
        ids = self.sample_clients(t)
        all_batches = [self.client_batch(t, c) for c in ids]
        weights = self._weights(all_batches)
        lo, hi = self.comm.shard_bounds(len(ids))
        my_ids, my_batches, my_weights = ids[lo:hi], all_batches[lo:hi], weights[lo:hi]
        train_loss = self.comm.allreduce_(self._train_loss(my_batches, my_weights))
        ctx = RoundContext(t=t, lr=lr, client_ids=ids, my_ids=my_ids, my_batches=my_batches, my_weights=my_weights,
                           params=self.params, model=self.model, engine=self.engine, comm=self.comm,
                           client_data=self.client_data, seed=self.seed, weight_decay=self._weight_decay(len(ids)),
                           run_name=f"{self.spec.label} ({self.spec.rule.name})", rounds=tr.rounds,
                           last_checkpoint=self.last_checkpoint, clip_norm=tr.clip_norm,
                           local_augment=lambda c: self.local_augment(t, c))
        try:
            update = self.rule.round(ctx)
        except (SketchError, FloatingPointError) as exc:
            if isinstance(exc, NonFiniteError) or not _about_non_finite(exc):
                raise
            raise NonFiniteError(
                f"{self.spec.label} ({self.spec.rule.name}): a NaN or infinite value inside the rule in round "
                f"{t + 1} of {tr.rounds} ({exc}); the run stopped. Last good checkpoint: "
                f"{self.last_checkpoint or 'none (no checkpoint was written)'}. Lower the learning rate "
                f"(train.lr) or see bench/FEDSIM_STUDY.md for this rule's knobs.") from exc
        new = self.params - update
        acc = self.accountant
        # The round's one host read of bookkeeping: the divergence flag, the train loss, the
        # changed count and the download counts together (nothing changes before the flag is seen).
        (finite,), (loss,), (changed,), since = read_host(
            torch.isfinite(new).all(), train_loss, torch.count_nonzero(update), acc.changed_since())
        if not finite:
            where = self.last_checkpoint or "none (no checkpoint was written)"
            raise NonFiniteError(
                f"{self.spec.label} ({self.spec.rule.name}): the weights became NaN/inf in round {t + 1} "
                f"of {tr.rounds}; the run stopped. Last good checkpoint: {where}. Lower the learning "
                f"rate (train.lr) or see bench/FEDSIM_STUDY.md for this rule's knobs.")
        down_each = acc.download(t, ids, changed_since=since)
        self.params.copy_(new)
        changed = acc.record_update(t, update, changed=changed)
        up = len(ids) * self.rule.upload_bytes()
        down = sum(down_each) + len(ids) * self.rule.extra_download_bytes()
        acc.add(up, down)
        st = acc.state
        ref_up, ref_down = reference_bytes(self.d, tr.clients_per_round, t + 1)
        row = {"round": t + 1, "lr": lr, "train_loss": loss, "test_loss": None,
               "test_acc": None, "up_bytes": up, "down_bytes": down, "total_up": st.up, "total_down": st.down,
               "changed": changed, "compression": (ref_up + ref_down) / (st.up + st.down)}
        if (t + 1) % tr.eval_every == 0 or t + 1 == tr.rounds:
            row["test_loss"], row["test_acc"] = self.evaluate()
            if self.y_test.ndim > 1:  # text: bits per character
                row["test_bpc"] = row["test_loss"] / math.log(2)
        self.t += 1
        self.history.append(row)
        return row

    # -------------------------------------------------------------- checkpoints
    def _ckpt_path(self):
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_NAME

    def state_payload(self):
        """Everything a resumed run needs, as a checkpoint payload.

        Returns
        -------
        dict
        """
        payload = {"round": self.t, "label": self.spec.label, "params": self.params.detach().cpu().clone(),
                   "rule": self.rule.state_dict(), "accounting": self.accountant.state_dict(),
                   "history": [dict(r) for r in self.history], "torch_rng": torch.get_rng_state(),
                   "elapsed": self.elapsed}
        if self.device.type == "cuda":
            payload["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return payload

    def save_checkpoint(self):
        """Write the checkpoint (rank 0 only); returns its path.

        Returns
        -------
        Path or None
            None when there is no output folder or this rank does not write.
        """
        path = self._ckpt_path()
        if path is None or not self.comm.is_writer:
            return None
        save_checkpoint(path, self.state_payload(), self.config_hash)
        self.last_checkpoint = str(path)
        return path

    def restore(self, path=None):
        """Load a checkpoint of this configuration (raises CheckpointError otherwise).

        Parameters
        ----------
        path : str or Path, optional
            Default ``out_dir/checkpoint.ckpt``.

        Raises
        ------
        CheckpointError
            Missing, corrupt, of another configuration or of another shape.
        """
        path = Path(path) if path is not None else self._ckpt_path()
        payload = load_checkpoint(path, self.config_hash)
        self.params.copy_(payload["params"].to(self.device))
        self.rule.load_state_dict(payload["rule"])
        self.accountant.load_state_dict(payload["accounting"])
        self.history = [dict(r) for r in payload["history"]]
        self.t = int(payload["round"])
        self.elapsed = float(payload.get("elapsed", 0.0))
        torch.set_rng_state(payload["torch_rng"])
        if "cuda_rng" in payload and self.device.type == "cuda":
            torch.cuda.set_rng_state(payload["cuda_rng"], self.device)
        self.last_checkpoint = str(path)

    # --------------------------------------------------------------------- run
    def run(self, *, resume=False, on_round=None):
        """Run to the last round (resuming from the checkpoint when asked and present).

        Parameters
        ----------
        resume : bool
            Continue from ``out_dir/checkpoint.ckpt`` when it exists.
        on_round : callable, optional
            Called with each metrics row, after its metrics and checkpoint are written.

        Returns
        -------
        RunResult
            ``status`` "ok"; divergence and bad client updates raise.

        Raises
        ------
        OutputFolderBusy
            Another live process runs in ``out_dir`` (rank 0 locks it for the run).
        """
        lock = _lock_output(self.out_dir, self.comm) if self.out_dir is not None else None
        try:
            return self._run(resume, on_round)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, resume, on_round):
        """The run itself, with the run folder locked."""
        from .report import MetricsWriter

        writer = self.comm.is_writer and self.out_dir is not None
        self.provenance = collect(self.device)
        if writer:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = self._ckpt_path()
        if resume and ckpt is not None and ckpt.exists():
            self.restore(ckpt)
            self.provenance["resumed_at_round"] = self.t
        board = None
        if writer and self.spec.output.tensorboard:
            from ._tensorboard import TensorBoardLog
            board = TensorBoardLog(self.out_dir / TENSORBOARD_DIR)
        metrics = MetricsWriter(self.out_dir, self.spec.output.metrics) if writer else None
        if metrics is not None:
            metrics.rewrite(self.history)
        tr, every = self.spec.train, self.spec.output.checkpoint_every
        bar = _progress(self.spec.label, tr.rounds, self.t, enabled=self.progress and self.comm.is_writer)
        try:
            while self.t < tr.rounds:
                start = time.perf_counter()
                row = self.step()
                self.elapsed += time.perf_counter() - start
                if metrics is not None:
                    metrics.append(row)
                if board is not None:
                    board.add_row(row)
                if every and (self.t % every == 0 or self.t == tr.rounds):
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
                    if row["test_acc"] is not None:
                        bar.set_postfix(acc=f"{row['test_acc']:.3f}")
                if on_round is not None:
                    on_round(row)
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
            if board is not None:
                board.close()
        result = self.result("ok", "")
        if writer:
            buf = io.BytesIO()
            torch.save(self.params.detach().cpu(), buf)
            atomic_write_bytes(self.out_dir / FINAL_PARAMS_NAME, buf.getvalue())
            _write_summary(self.out_dir, result, self.provenance)
        return result

    def result(self, status, message):
        """The :class:`RunResult` of the run so far.

        Parameters
        ----------
        status : str
            "ok" or "diverged".
        message : str

        Returns
        -------
        RunResult
        """
        tr = self.spec.train
        ref_up, ref_down = reference_bytes(self.d, tr.clients_per_round, self.spec.reference_rounds)
        evals = [r for r in self.history if r["test_acc"] is not None]
        acc = evals[-1]["test_acc"] if evals and status == "ok" else float("nan")
        loss = evals[-1]["test_loss"] if evals and status == "ok" else float("nan")
        st = self.accountant.state
        name = self.dataset.name
        return RunResult(self.spec.label, self.spec.group, self.spec.rule.name, status, message, self.t, acc, loss,
                         st.up, st.down, ref_up, ref_down, self.elapsed, self.d, self.config_hash,
                         dataset=name, synthetic=is_synthetic(name), history=list(self.history))


def _about_non_finite(exc):
    """Whether a sketch refused a value for being NaN, infinite or overflowing (not a usage error)."""
    if isinstance(exc, FloatingPointError):
        return True
    return re.search(r"\bnan\b|infinit|overflow|finite", str(exc), re.IGNORECASE) is not None


def _progress(label, total, initial, enabled):
    """A tqdm bar on stderr, or None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise MissingDependency("the progress bar needs tqdm: pip install tqdm (or set output.progress = "
                                "false / pass --no-progress)") from exc
    return tqdm(total=total, initial=initial, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True)


def is_synthetic(dataset_name):
    """Whether a dataset name is generated data (``synthetic_*``), not real files.

    Parameters
    ----------
    dataset_name : str

    Returns
    -------
    bool
    """
    return str(dataset_name).startswith("synthetic")


def _fallback_name(data_cfg):
    """The dataset that ``data.fallback`` names (``"synthetic"``: the dataset's synthetic stand-in)."""
    from .data import DATASETS

    if data_cfg.fallback != "synthetic":
        return data_cfg.fallback
    name = f"synthetic_{data_cfg.dataset}"
    if name not in DATASETS:
        stand_ins = [d for d in DATASETS if is_synthetic(d)]
        raise ConfigError(f"data.fallback = 'synthetic': dataset {data_cfg.dataset!r} has no synthetic stand-in "
                          f"(there are {', '.join(stand_ins)}); provide its files or name a fallback dataset")
    return name


def load_run_dataset(data_cfg, seed, log=None):
    """Load ``data_cfg.dataset``; if its files are missing and a fallback is set, load that instead.

    Without ``data.fallback`` missing files stop the run (saying how to opt in to
    synthetic data); a fallback is announced as a warning, and a synthetic dataset
    marks every output of the run (see :func:`is_synthetic`).

    Parameters
    ----------
    data_cfg : DataConfig
    seed : int
    log : callable, optional
        Where the fallback warning goes (default stderr).

    Returns
    -------
    fedsim.data.Dataset

    Raises
    ------
    DataError
        Unknown dataset or bad files (DataFileMissing when missing and no fallback is set).
    """
    from .data import load_dataset

    try:
        return load_dataset(data_cfg.dataset, data_cfg.root, seed=seed, **data_cfg.loader_options())
    except DataFileMissing as exc:
        if not data_cfg.fallback:
            raise DataFileMissing(f"{exc} (no data.fallback is set, so the run stops rather than train on "
                                  f"other data; set data.fallback = \"synthetic\" to run on generated "
                                  f"stand-in data, labelled synthetic in every output)") from exc
        name = _fallback_name(data_cfg)
        msg = (f"{exc}; using data.fallback = {data_cfg.fallback!r} ({name}) instead"
               + (": SYNTHETIC data, every output is labelled so" if is_synthetic(name) else ""))
        if log is None:
            _log.warning(msg)
        else:
            log(f"warning: {msg}")
        return load_dataset(name, data_cfg.root, seed=seed)


def run_experiment(cfg, *, only=None, out_dir=None, resume=False, progress=None, comm=None, dataset=None,
                   log=None):
    """Run every method (and sweep point) of a config; write results, table and plots.

    Parameters
    ----------
    cfg : Config
    only : sequence of str, optional
        Method labels to run.
    out_dir : str or Path, optional
        Default ``output.dir / output.name``.
    resume : bool
        Skip runs whose summary exists for the same config hash, resume those with a checkpoint
        (a finished run whose summary or metrics are damaged continues from its checkpoint).
    progress : bool, optional
        Default ``output.progress``.
    comm : Communicator, optional
    dataset : Dataset, optional
        Use this dataset for every run.
    log : callable, optional
        Where messages go (default: the ``fedsim`` logger; warnings at WARNING, the rest at INFO).

    Returns
    -------
    ExperimentResult

    Raises
    ------
    OutputFolderBusy
        Another live run holds the experiment folder (rank 0 locks it for the
        whole experiment; a lock left by a dead process is taken over).
    RunFileError
        With ``resume``: a finished run's summary.json or metrics file is damaged
        and it has no checkpoint to rebuild them from.
    """
    from .report import write_experiment

    say, warn = (log, log) if log is not None else (_log.info, _log.warning)
    provenance = collect(cfg.train.device)
    comm = comm or LocalCommunicator()
    root = experiment_dir(cfg.output, out_dir)
    progress = cfg.output.progress if progress is None else progress
    specs = cfg.runs(only)
    lock = _lock_output(root, comm)
    try:
        results = _run_specs(specs, root, resume, progress, comm, dataset, log, say, warn)
        exp = ExperimentResult(results, root if comm.is_writer else None, finish(provenance))
        if comm.is_writer:
            write_experiment(exp, cfg, plot=cfg.output.plot, log=log)
    finally:
        if lock is not None:
            lock.release()
    return exp


def _lock_output(root, comm):
    """Rank 0 locks an output folder; every rank learns whether it could (else all raise)."""
    lock = busy = None
    if comm.is_writer:
        try:
            lock = OutputLock(root).acquire()
        except OutputFolderBusy as exc:
            busy = exc
        except OSError as exc:  # --out names a file, or a folder this user cannot write
            busy = ConfigError(f"cannot use {root} as an output folder: {exc.strerror or exc}")
    if comm.world_size > 1:
        flag = comm.allreduce_(torch.tensor([0.0 if busy is None else 1.0]))
        if busy is None and float(flag[0]) > 0:
            busy = OutputFolderBusy(f"rank 0 could not lock the output folder {root}: another run uses it")
    if busy is not None:
        if lock is not None:
            lock.release()
        raise busy
    return lock


def _run_specs(specs, root, resume, progress, comm, dataset, log, say, warn):
    """Run (or, with resume, skip or continue) every spec; returns their RunResults."""
    cache = {}
    results = []
    hook = fault_hook(comm.rank)  # None unless a crash test asks for it
    for spec in specs:
        folder = run_dir(root, spec.label)
        done = _finished(spec, folder, warn) if resume else None
        if done is not None:
            results.append(done)
            say(f"{spec.label}: already finished, skipped (--resume)")
            continue
        key = (spec.data.dataset, spec.data.root, spec.data.fallback, spec.train.seed,
               tuple(sorted(spec.data.loader_options().items())))
        if dataset is not None:
            data = dataset
        else:
            if key not in cache:
                cache[key] = load_run_dataset(spec.data, spec.train.seed, log)
            data = cache[key]
        sim = Simulation(spec, dataset=data, comm=comm, out_dir=folder, progress=progress)
        try:
            result = sim.run(resume=resume, on_round=hook)
        except NonFiniteError as exc:  # weights or a client update (ClientUpdateError) went NaN/inf
            warn(f"diverged: {exc}")
            result = sim.result("diverged", str(exc))
        if result.status != "ok" and comm.is_writer:
            _write_summary(folder, result, sim.provenance)
        results.append(result)
    return results


def _write_summary(folder, result, provenance):
    """``summary.json`` (the result and what ran) and ``provenance.json`` of a run, written atomically."""
    provenance = finish(dict(provenance))
    folder = Path(folder)
    atomic_write_text(folder / PROVENANCE_NAME, json.dumps(provenance, indent=1))
    atomic_write_text(folder / SUMMARY_NAME, json.dumps({**result.summary(), "provenance": provenance}, indent=1))


def _finished(spec, folder, warn):
    """The RunResult of a run that --resume can skip, or None to run (or continue) it.

    A damaged summary.json or metrics file is recovered by continuing from the
    run's checkpoint (which holds the whole history; the run is deterministic);
    without a checkpoint the error names the file and what to do.
    """
    from .report import read_metrics

    summary, ckpt = folder / SUMMARY_NAME, folder / CHECKPOINT_NAME
    if not summary.exists():
        return None
    try:
        saved = json.loads(summary.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(saved.get("rounds_done"), int):
            raise ValueError("not a run summary")
        if saved.get("config_hash") != spec.config_hash():
            return None
        history = read_metrics(folder)
        if len(history) != saved["rounds_done"]:
            raise RunFileError(f"metrics of {folder} hold {len(history)} rounds, summary.json says "
                               f"{saved['rounds_done']}")
    except (ValueError, UnicodeDecodeError) as exc:  # RunFileError and JSONDecodeError are ValueErrors
        what = str(exc) if isinstance(exc, RunFileError) else f"{summary} is truncated or malformed ({exc})"
        if ckpt.exists():
            warn(f"{what}; {spec.label}: continuing from {ckpt} instead, which rewrites them")
            return None
        raise RunFileError(f"{what}; {spec.label} has no checkpoint to rebuild it from (output.checkpoint_every "
                           f"= 0?). Delete the folder {folder} to run it again, or run without --resume") from None
    names = {f.name for f in dataclasses.fields(RunResult)}
    fields = {k: v for k, v in saved.items() if k in names and k != "history"}
    return RunResult(**fields, history=history)


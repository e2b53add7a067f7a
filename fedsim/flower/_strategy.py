"""The Flower strategy that runs a fedsim server rule on the clients' uploads."""
import logging
import time

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import Strategy

from adapters.torch import from_array

from .._schedule import learning_rate
from ..errors import ClientUpdateError, ConfigError, NonFiniteError
from ..rules import make_rule
from ._context import UploadedRound
from ._download import DOWNLOADS, DownloadState
from ._protocol import (ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, UPLOAD, UPLOAD_KIND, FlowerRoundError, array_of,
                        weights_from_record, weights_record)

__all__ = ["RuleStrategy", "SUPPORTED_RULES", "make_server_app"]

log = logging.getLogger("fedsim")

SUPPORTED_RULES = tuple(UPLOAD_KIND)


def _check_rule(rule):
    """Raise ConfigError for a rule (or rule setting) that cannot run in Flower."""
    if rule.name not in UPLOAD_KIND:
        raise ConfigError(f"rule {rule.name!r} has no Flower protocol; choose one of {list(SUPPORTED_RULES)}")
    if rule.world_size != 1:
        raise ConfigError(f"the rule was built for world_size = {rule.world_size}; in Flower the server is one process")
    cfg = rule.params
    if rule.name == "fetchsgd" and cfg.second_round:
        raise ConfigError("rule.second_round > 0 needs a second client exchange per round, which the Flower "
                          "strategy does not run; set second_round = 0")
    if rule.name == "local_topk" and cfg.local_error_feedback:
        raise ConfigError("local_topk with local_error_feedback keeps each client's error on the server, "
                          "which Flower clients cannot share; set local_error_feedback = false")


class RuleStrategy(Strategy):
    """A Flower strategy whose aggregation is a fedsim server rule (FetchSGD, local top-k, ...).

    Each round it samples ``clients_per_round`` of the connected nodes (waiting for them to
    connect), sends the full flat weights and the round's config, merges the replies
    weighted by example count (or uniformly) and applies the rule: for FetchSGD the summed
    sketch goes to :meth:`fedsim.rules.FetchSGD.step_from_sketch`, for the others the
    uploads go to ``rule.round`` through an :class:`UploadedRound`.

    Parameters
    ----------
    rule : fedsim.rules.ServerRule
        The rule object (``fedsim.rules.make_rule``); its state is the server's state.
    lr : float or callable
        The learning rate, or ``lr(t)`` for the 0-based round ``t``.
    clients_per_round : int
        Nodes sampled per round.
    weight_decay : float, default 0
        Sent to the clients, which add ``weight_decay * w`` to their gradient.
    weighting : {"samples", "uniform"}, default "samples"
        Aggregation weights: by the replies' ``num-examples``, or equal.
    seed : int, default 0
        Client sampling draws ``numpy.random.default_rng([seed, 1, t])`` over the sorted node
        ids (fedsim's draw, so nodes in partition order pick fedsim's clients); FedAvg
        clients draw their sample orders from it.
    min_available_nodes : int, optional
        Nodes that must be connected before sampling (default ``clients_per_round``).
    wait_timeout : float, default 120
        Seconds to wait for them; then :class:`FlowerRoundError`.
    poll_interval : float, default 0.5
        Seconds between two looks at the connected nodes.
    download : {"full", "changed"}, default "full"
        ``"full"``: every sampled node gets the full weights (stateless clients, Flower's
        usual way).  ``"changed"``: a node that took part before gets only the weights
        changed since (indices and values, or the full weights when smaller) and keeps its
        copy in its ``Context.state`` (fedsim's download accounting, made real).
    on_round : callable, optional
        ``on_round(server_round, update, metrics)`` after each round (update: the d-vector
        with ``w <- w - update``; metrics: the round's dict).

    Raises
    ------
    ConfigError
        A rule without a Flower protocol, FetchSGD with ``second_round``, local top-k with
        local error feedback, or a bad argument.

    Notes
    -----
    Bytes: ``down-bytes`` and ``up-bytes`` in the round metrics are the payload of the
    ArrayRecords actually sent and received (``ArrayRecord.count_bytes()``: NumPy ``.npy``
    bytes, header included, plus key names; metadata, config and transport framing not
    counted).  With ``download="full"`` the weights go down in full to every sampled node
    every round, ``4 d`` bytes per node; with ``"changed"`` a returning node downloads
    ``8`` bytes per changed weight (``4 d`` at most), as fedsim's accounting counts (fedsim
    also lets a new client rebuild the seeded initial model; here a new node downloads the
    full weights once).  ``rule-up-bytes`` is the rule's own count (``rule.upload_bytes()``
    per reply).
    """

    def __init__(self, rule, *, lr, clients_per_round, weight_decay=0.0, weighting="samples", seed=0,
                 min_available_nodes=None, wait_timeout=120.0, poll_interval=0.5, download="full",
                 on_round=None):
        _check_rule(rule)
        if download not in DOWNLOADS:
            raise ConfigError(f"download must be one of {list(DOWNLOADS)}, got {download!r}")
        if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int) or clients_per_round < 1:
            raise ConfigError(f"clients_per_round must be a positive int, got {clients_per_round!r}")
        if weighting not in ("samples", "uniform"):
            raise ConfigError(f"weighting must be 'samples' or 'uniform', got {weighting!r}")
        if not callable(lr) and not (isinstance(lr, (int, float)) and lr > 0):
            raise ConfigError(f"lr must be a positive number or a callable lr(t), got {lr!r}")
        self.rule = rule
        self._lr = lr if callable(lr) else (lambda t, base=float(lr): base)
        self.clients_per_round = clients_per_round
        self.weight_decay = float(weight_decay)
        self.weighting, self.seed = weighting, int(seed)
        self.min_available_nodes = max(min_available_nodes or clients_per_round, clients_per_round)
        self.wait_timeout, self.poll_interval = float(wait_timeout), float(poll_interval)
        self.on_round, self.download = on_round, download
        self._downloads = None  # DownloadState with download="changed"
        self.weights = None  # the current flat weights (CPU float32 tensor), set by configure_train
        self._pending = None

    @classmethod
    def from_spec(cls, spec, d, **kw):
        """The strategy of a fedsim run spec (rule, schedule, weight decay, weighting, seed, W).

        Parameters
        ----------
        spec : fedsim.RunSpec
            E.g. ``fedsim.load_config(...).runs()[0]``.
        d : int
            The model's number of trainable parameters.
        **kw
            Passed to the constructor (``on_round``, ``wait_timeout``, ...).

        Returns
        -------
        RuleStrategy
        """
        tr = spec.train
        rule = make_rule(spec.rule, d, device=tr.device)
        lr = (lambda t: learning_rate(tr.schedule, tr.lr, t, tr.rounds, tr.warmup))
        return cls(rule, lr=lr, clients_per_round=tr.clients_per_round, weight_decay=tr.weight_decay,
                   weighting=tr.weighting, seed=tr.seed, **kw)

    # ------------------------------------------------------------------ sampling
    def _wait_for_nodes(self, grid):
        """The sorted connected node ids, once at least ``min_available_nodes`` are there."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            if len(nodes) >= self.min_available_nodes:
                return nodes
            if time.monotonic() >= deadline:
                raise FlowerRoundError(f"only {len(nodes)} node(s) connected after {self.wait_timeout:g} s; the "
                                       f"strategy needs {self.min_available_nodes} (clients_per_round = "
                                       f"{self.clients_per_round})")
            log.info("waiting for nodes: %d connected, %d needed", len(nodes), self.min_available_nodes)
            time.sleep(self.poll_interval)

    def sample_nodes(self, grid, t):
        """The node ids of 0-based round ``t``.

        Parameters
        ----------
        grid : flwr.serverapp.Grid
        t : int

        Returns
        -------
        list of int
            ``clients_per_round`` ids, in increasing order.

        Raises
        ------
        FlowerRoundError
            Fewer than ``min_available_nodes`` connected within ``wait_timeout``.
        """
        nodes = self._wait_for_nodes(grid)
        pick = np.sort(np.random.default_rng([self.seed, 1, t]).choice(len(nodes), self.clients_per_round,
                                                                         replace=False))
        return [nodes[i] for i in pick]

    # ------------------------------------------------------------------- train
    def _rule_config(self, t, lr):
        """The ConfigRecord entries the clients need for this rule."""
        cfg, name = self.rule.params, self.rule.name
        out = {"server-round": t + 1, "rule": name, "lr": float(lr), "weight-decay": self.weight_decay,
               "seed": self.seed}
        if name == "fetchsgd":
            s = self.rule.new_sketch()
            out.update({"sketch-kind": cfg.sketch, "sketch-rows": int(s.rows), "sketch-cols": int(s.cols),
                        "sketch-seed": int(getattr(s, "seed", 0)),
                        "sketch-hash-version": int(getattr(s, "hash_version", 0))})
        elif name == "local_topk":
            out["k"] = int(cfg.k)
        elif name == "fedavg":
            out.update({"local-epochs": int(cfg.local_epochs), "local-batch-size": int(cfg.local_batch_size or 0)})
        return out

    def configure_train(self, server_round, arrays, config, grid):
        """Sample nodes; send each the weights (full or changed) and the round's config.

        Parameters
        ----------
        server_round : int
            1-based.
        arrays : flwr.app.ArrayRecord
            The current weights (:func:`weights_record`).
        config : flwr.app.ConfigRecord
            Extra entries for the clients (the strategy's own keys win).
        grid : flwr.serverapp.Grid

        Returns
        -------
        list of flwr.app.Message
        """
        t = server_round - 1
        weights = weights_from_record(arrays, self.rule.d)
        if self.download == "changed" and (self._downloads is None or not torch.equal(weights, self.weights)):
            # Weights from elsewhere (a first or a new start): no node's copy can be trusted.
            self._downloads = DownloadState(self.rule.d)
        self.weights = weights
        lr = float(self._lr(t))
        nodes = self.sample_nodes(grid, t)
        base = {**dict(config), **self._rule_config(t, lr)}
        if self.download == "full":
            record = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(base)})
            payloads = {n: record for n in nodes}
            down = len(nodes) * arrays.count_bytes()
        else:
            payloads, down = {}, 0
            for n in nodes:
                sent, extra = self._downloads.payload(n, weights)
                payloads[n] = RecordDict({ARRAYS: sent, CONFIG: ConfigRecord({**base, **extra})})
                down += sent.count_bytes()
        self._pending = {"round": server_round, "lr": lr, "nodes": set(nodes), "down": down}
        log.info("round %d: sampled %d of the connected nodes", server_round, len(nodes))
        return [Message(payloads[n], dst_node_id=n, message_type=MessageType.TRAIN, group_id=str(server_round))
                for n in nodes]

    def _read_reply(self, msg):
        """``(node, n_examples, train_loss, upload_arrays, upload_bytes)`` of one reply (checked)."""
        node, name = int(msg.metadata.src_node_id), self.rule.name
        where = f"round {self._pending['round']}: the reply of node {node}"
        if node not in self._pending["nodes"]:
            raise FlowerRoundError(f"{where} answers no message of this round")
        content = msg.content
        if UPLOAD not in content.array_records or METRICS not in content.metric_records:
            raise ClientUpdateError(f"{where} lacks the {UPLOAD!r} ArrayRecord or the {METRICS!r} MetricRecord")
        metrics, upload = content[METRICS], content[UPLOAD]
        n = metrics.get(NUM_EXAMPLES)
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not n > 0:
            raise ClientUpdateError(f"{where} has {NUM_EXAMPLES} = {n!r}; it must be a positive number")
        try:
            arrays = {key: array_of(upload, key, where) for key in UPLOAD_KIND[name]}
        except ValueError as exc:
            raise ClientUpdateError(str(exc)) from None
        for key, a in arrays.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise ClientUpdateError(f"{where}: {key!r} is NaN or infinite; it was rejected before reaching "
                                        f"the server state")
        return node, float(n), float(metrics.get("train-loss", float("nan"))), arrays, upload.count_bytes()

    def _dense(self, arrays, node):
        """One client's upload as a dense d-vector (and its kind)."""
        d, name = self.rule.d, self.rule.name
        if name == "local_topk":
            idx, vals = arrays["indices"], arrays["values"]
            if idx.shape != (self.rule.params.k,) or vals.shape != idx.shape or idx.dtype.kind not in "iu" \
                    or (idx.size and (idx.min() < 0 or idx.max() >= d)):
                raise ClientUpdateError(f"node {node}: local top-k upload must be k = {self.rule.params.k} indices "
                                        f"in [0, {d}) and as many values")
            v = torch.zeros(d, dtype=torch.float32)
            v[torch.from_numpy(idx.astype(np.int64))] = torch.from_numpy(vals.astype(np.float32))
            return v, "topk"
        (key,) = UPLOAD_KIND[name]
        a = arrays[key]
        if a.shape != (d,):
            raise ClientUpdateError(f"node {node}: {key!r} must have shape ({d},), got {a.shape}")
        return torch.from_numpy(a.astype(np.float32)), "delta" if key == "delta" else "gradient"

    def _fetchsgd_update(self, tables, w, lr, nodes):
        """Weighted sum of the clients' tables into one sketch, then the rule's step."""
        s = self.rule.new_sketch()
        shape = tuple(s.table.shape)
        total = torch.zeros(shape, dtype=torch.float32, device=self.rule.device)
        for node, table, wi in zip(nodes, tables, w.tolist()):
            if table.shape != shape:
                raise ClientUpdateError(f"node {node}: sketch table has shape {table.shape}, expected {shape} "
                                        f"(rows, cols)")
            total.add_(torch.from_numpy(table.astype(np.float32)).to(self.rule.device), alpha=wi)
        from_array(s.table).copy_(total)
        return self.rule.step_from_sketch(s, lr)

    def aggregate_train(self, server_round, replies):
        """Merge the replies with the rule and apply its update.

        Parameters
        ----------
        server_round : int
        replies : iterable of flwr.app.Message
            Error replies are logged and left out (the weights renormalised over the rest).

        Returns
        -------
        (flwr.app.ArrayRecord, flwr.app.MetricRecord)
            The new weights; the round's metrics (``train-loss``, ``num-examples``,
            ``clients``, ``lr``, ``changed``, ``up-bytes``, ``down-bytes``, ``rule-up-bytes``).

        Raises
        ------
        ClientUpdateError
            A reply is malformed or not finite (before any server state changes).
        FlowerRoundError
            No usable reply, or a reply to no message of this round.
        NonFiniteError
            The new weights are not finite.
        """
        if self._pending is None or self._pending["round"] != server_round:
            raise FlowerRoundError(f"aggregate_train({server_round}) without configure_train for that round")
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        for m in failed:
            log.warning("round %d: node %d failed: %s", server_round, m.metadata.src_node_id, m.error.reason)
        good = sorted((self._read_reply(m) for m in replies if not m.has_error()), key=lambda r: r[0])
        if self._downloads is not None:
            for m in failed:
                self._downloads.failed(int(m.metadata.src_node_id))
            answered = {r[0] for r in good} | {int(m.metadata.src_node_id) for m in failed}
            for node in self._pending["nodes"] - answered:  # no reply: unknown what the node holds
                self._downloads.failed(node)
        if not good:
            reasons = "; ".join(f"node {m.metadata.src_node_id}: {m.error.reason}" for m in failed[:3])
            raise FlowerRoundError(f"round {server_round}: no usable reply from the {len(self._pending['nodes'])} "
                                   f"sampled node(s) ({len(failed)} failed{': ' + reasons if reasons else ''})")
        nodes = [r[0] for r in good]
        counts = torch.tensor([r[1] for r in good], dtype=torch.float64)
        w = counts / counts.sum() if self.weighting == "samples" else torch.full_like(counts, 1.0 / len(good))
        w = w.to(torch.float32)
        t, lr = server_round - 1, self._pending["lr"]
        if self.rule.name == "fetchsgd":
            update = self._fetchsgd_update([r[3]["table"] for r in good], w, lr, nodes)
        else:
            dense = [self._dense(r[3], r[0]) for r in good]
            cfg = self.rule.params
            setup = (cfg.local_epochs, cfg.local_batch_size) if self.rule.name == "fedavg" else None
            stack = torch.stack([v for v, _ in dense]).to(self.rule.device)
            ctx = UploadedRound(t, lr, nodes, w.to(self.rule.device), stack, dense[0][1], setup)
            update = self.rule.round(ctx)
        update = update.detach().to("cpu", torch.float32)
        new = self.weights - update
        if not bool(torch.isfinite(new).all()):
            raise NonFiniteError(f"{self.rule.name}: the weights became NaN/inf in round {server_round}; lower "
                                 f"the learning rate")
        self.weights = new
        if self._downloads is not None:
            for node in nodes:
                self._downloads.replied(node, self._downloads.version)
            self._downloads.applied(update)
        metrics = {"train-loss": float(sum(wi * r[2] for wi, r in zip(w.tolist(), good))),
                   "num-examples": float(counts.sum()), "clients": len(good), "lr": lr,
                   "changed": int(torch.count_nonzero(update)),
                   "up-bytes": int(sum(r[4] for r in good)), "down-bytes": int(self._pending["down"]),
                   "rule-up-bytes": len(good) * int(self.rule.upload_bytes())}
        self._pending = None
        if self.on_round is not None:
            self.on_round(server_round, update, dict(metrics))
        return weights_record(new), MetricRecord(metrics)

    # -------------------------------------------------------------- evaluate
    def configure_evaluate(self, server_round, arrays, config, grid):
        """No federated evaluation (evaluate centrally with ``start(..., evaluate_fn=...)``)."""
        return []

    def aggregate_evaluate(self, server_round, replies):
        """Nothing to aggregate."""
        return None

    def summary(self):
        """Log the setup."""
        log.info("RuleStrategy: rule %s, d = %d, %d clients per round, weighting %s, weight decay %g",
                 self.rule.name, self.rule.d, self.clients_per_round, self.weighting, self.weight_decay)


def make_server_app(strategy, initial_weights, num_rounds, *, timeout=3600.0, evaluate_fn=None):
    """A ServerApp that runs ``strategy`` from ``initial_weights`` for ``num_rounds`` rounds.

    Parameters
    ----------
    strategy : RuleStrategy
    initial_weights : torch.Tensor or numpy.ndarray
        The flat float32 initial weights (e.g. ``adapters.torch.flatten_params(model,
        trainable_only=True)``).
    num_rounds : int
    timeout : float, default 3600
        Seconds to wait for a round's replies.
    evaluate_fn : callable, optional
        ``evaluate_fn(server_round, arrays) -> MetricRecord or None`` (Flower's centralized evaluation).

    Returns
    -------
    flwr.serverapp.ServerApp
        After a run, ``strategy.result`` holds Flower's ``Result`` (final ``arrays``, metrics).
    """
    initial = weights_record(initial_weights)
    if initial["weights"].shape != (strategy.rule.d,):
        raise ConfigError(f"initial_weights has shape {initial['weights'].shape}, the rule's d is {strategy.rule.d}")
    app = ServerApp()

    @app.main()
    def main(grid, context):
        strategy.result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=num_rounds,
                                         timeout=timeout, evaluate_fn=evaluate_fn)

    return app

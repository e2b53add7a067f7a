"""A Flower Grid that hands each message to a ClientApp in this process: no network, no Ray."""
import logging
import uuid

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp.grid import Grid

from ..errors import ConfigError

try:  # where flwr keeps ``Run`` moved between releases
    from flwr.supercore.run import Run
except ImportError:  # pragma: no cover - older flwr
    from flwr.common.typing import Run

try:  # flwr >= 1.2x: instruction Messages read the process's task identity, which a runtime sets
    from flwr.supercore.task_identity import TaskIdentity
except ImportError:  # pragma: no cover - older flwr
    TaskIdentity = None

__all__ = ["InProcessGrid", "run_in_process"]

log = logging.getLogger("fedsim")


class InProcessGrid(Grid):
    """A ``Grid`` whose nodes are ClientApp calls in this process, one persistent Context per node.

    Messages are delivered synchronously in ``push_messages``; a ClientApp that raises
    answers with an error reply (as a SuperNode does).  Node ids are ``1 .. N`` in the order
    of ``node_configs``, so a strategy that sorts node ids sees partition order.

    Parameters
    ----------
    client_app : flwr.clientapp.ClientApp
    node_configs : sequence of dict
        One ``node_config`` per node (e.g. ``{"partition-id": i, "num-partitions": N}``).
    run_config : dict, optional
        Every node's ``run_config``.
    connect_after : int, default 0
        ``get_node_ids()`` answers ``[]`` for its first ``connect_after`` calls, as a real
        deployment does while SuperNodes connect (to exercise a strategy's wait).
    run_id : int, default 1
    """

    def __init__(self, client_app, node_configs, *, run_config=None, connect_after=0, run_id=1):
        node_configs = list(node_configs)
        if not node_configs:
            raise ConfigError("InProcessGrid needs at least one node config")
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.contexts = {i + 1: Context(run_id=run_id, node_id=i + 1, node_config=dict(cfg), state=RecordDict(),
                                        run_config=dict(run_config or {}))
                         for i, cfg in enumerate(node_configs)}
        self._connect_after, self._polls = int(connect_after), 0
        self._replies = {}
        if TaskIdentity is not None:  # what flwr's own in-process runtime (flwr.server.compat) sets
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID

    def set_run(self, run):
        """Use ``run`` (a ``flwr.supercore.run.Run``)."""
        if not isinstance(run, Run):
            raise TypeError(f"run must be a Run, got {type(run).__name__}")
        self._run = run
        if TaskIdentity is not None:
            TaskIdentity.run_id = run.run_id

    @property
    def run(self):
        """The run."""
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        """A new instruction message (as ``Message(content, dst_node_id, message_type, ...)``)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        """The connected nodes (none during the first ``connect_after`` calls)."""
        self._polls += 1
        return [] if self._polls <= self._connect_after else list(self.contexts)

    def _deliver(self, msg):
        """The ClientApp's reply to ``msg`` (an error reply when it raises or the node is unknown)."""
        node = msg.metadata.dst_node_id
        raised = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        if node not in self.contexts:
            return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=f"no node {node} in this grid"),
                           reply_to=msg)
        try:
            reply = self.client_app(msg, self.contexts[node])
        except Exception as exc:  # a SuperNode turns a ClientApp's exception into an error reply
            log.warning("node %d: the ClientApp raised %s: %s", node, type(exc).__name__, exc)
            return Message(Error(code=raised, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        if not isinstance(reply, Message):
            reason = f"the ClientApp returned {type(reply).__name__}, not a Message"
            return Message(Error(code=raised, reason=reason), reply_to=msg)
        return reply

    def push_messages(self, messages):
        """Deliver each message now; returns their ids."""
        ids = []
        for msg in messages:
            # flwr has no public setter for the id: its own grids write the same field.
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            reply = self._deliver(msg)
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        """The replies to those ids (each handed out once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        """Push the messages and return every reply (delivery is synchronous)."""
        return self.pull_messages(self.push_messages(messages))


def run_in_process(server_app, client_app, node_configs, *, run_config=None, connect_after=0):
    """Run a ServerApp against ClientApp nodes in this process (see :class:`InProcessGrid`).

    Parameters
    ----------
    server_app : flwr.serverapp.ServerApp
    client_app : flwr.clientapp.ClientApp
    node_configs : sequence of dict
    run_config : dict, optional
    connect_after : int, default 0

    Returns
    -------
    InProcessGrid
        The grid (its ``contexts`` hold each node's state).
    """
    grid = InProcessGrid(client_app, node_configs, run_config=run_config, connect_after=connect_after)
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))
    server_app(grid, context)
    return grid

"""The multi-engine adapter: direct control of any set of engines.

``MultiEngine`` implements IMultiEngine on top of the controller's queues.
``MultiEngineReferenceable`` publishes it; each client ``connect``s and gets
its own ``MultiEngineSession``, which keeps that client's pending results
(never another client's) within a bound (both in multienginesession.py).
"""

from __future__ import annotations

import importlib
import itertools
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from ipython1.common import ops, properties
from ipython1.common.addresses import join_host_port
from ipython1.common.errors import (
    EngineError,
    InvalidEngineID,
    KernelError,
    PermissionDenied,
    error_to_wire,
)
from ipython1.common.interfaces import IMultiEngine
from ipython1.controller.events import describe_command
from ipython1.controller.queue import Command, user_of
from ipython1.controller.recovered import make_tag
from ipython1.controller.sessionlog import SessionLog
from ipython1.transport.data.local import BOOK_TTL, BOOK_USES
from ipython1.transport.data.stream import MAX_STREAMS

if TYPE_CHECKING:
    from ipython1.controller.registry import Controller

RESTART_TIMEOUT = 120.0  # seconds mec.restart waits for the engines to come back


MAX_LOG_LINES = 10_000  # log lines one logs() call returns per engine at most
_call_ids = itertools.count(1)


def _failure_reply(engine_id: int, failure: Failure) -> dict[str, Any]:
    """Turn a failed command into an error reply naming its engine."""
    exc = failure.value
    if not isinstance(exc, KernelError):
        # e.g. Foolscap's DeadReferenceError when the engine vanished mid-call

        exc = EngineError(engine_id, f"engine {engine_id} died ({failure.getErrorMessage()})")
    return {"engine_id": engine_id, "status": "error", "error": error_to_wire(exc, engine_id)}


@implementer(IMultiEngine)
class MultiEngine:
    """Direct multi-engine control; every method returns a Deferred."""

    def __init__(self, controller: Controller, service: Any = None) -> None:
        self.controller = controller
        self.service = service
        self.commands = SessionLog()  # what session_log() reports

    def _each(self, ids: list[int], op: str, args_for: Any, client: str = "",
              description: str = "",
              recover: tuple[str, int] | None = None) -> Deferred[list[dict[str, Any]]]:
        """Queue op on each engine; fire with the replies in target order.

        recover: (the client's token, its call id): the engines keep their replies
        for a restarted controller (controller/recovered.py)."""
        ds = []
        call, user = next(_call_ids), user_of(client)
        tag = make_tag(*recover, len(ids)) if recover else ""
        events = self.controller.events
        with events.held_writes():  # queued and started: one transcript write
            if ids:
                first = args_for(ids[0]) if callable(args_for) else args_for
                data = describe_command(op, tuple(first), description)
                if op == "push" and callable(args_for):  # push_each: the names on any engine
                    data["names"] = sorted({k for e in ids for k in args_for(e)[0]})
                events.publish("queued", user, None, {
                    **data, "targets": list(ids), "call": call}, client)
            for engine_id in ids:
                args = args_for(engine_id) if callable(args_for) else args_for
                command = Command(op, tuple(args), client=client, description=description,
                                  user=user, call=call, tag=tag)
                d = self.controller.submit(engine_id, command)
                d.addErrback(lambda f, e=engine_id: _failure_reply(e, f))
                ds.append(d)
        return defer.gatherResults(ds, consumeErrors=True)

    def get_ids(self) -> Deferred[list[int]]:
        return defer.succeed(self.controller.ids())

    def run(self, op: str, args: tuple[Any, ...], targets: Any = "all",
            client: str = "", recover: tuple[str, int] | None = None) -> Deferred[Any]:
        """Run a command of the op table on each target (the session log keeps logged ones)."""
        ids = self.controller.targets(targets)
        entry = self.commands.record(op, targets, client) if ops.op(op).logged else None
        d = self._each(ids, op, tuple(args), client, ops.describe(op, args), recover)
        return d if entry is None else d.addCallback(self.commands.finish, entry)

    def execute(self, code: str, targets: Any = "all", client: str = "",
                recover: tuple[str, int] | None = None) -> Deferred[Any]:
        ids = self.controller.targets(targets)
        entry = self.commands.record("execute", targets, client, code=code)
        d = self._each(ids, "execute", (code,), client, code[:200], recover)
        return d.addCallback(self.commands.finish, entry)

    def push(self, namespace: dict[str, list[bytes]], targets: Any = "all",
             client: str = "", recover: tuple[str, int] | None = None) -> Deferred[Any]:
        ids = self.controller.targets(targets)
        entry = self.commands.record("push", targets, client, values={"all": namespace})
        d = self._each(ids, "push", (namespace,), client, "push " + ", ".join(namespace),
                       recover)
        return d.addCallback(self.commands.finish, entry)

    def push_each(self, namespaces: dict[int, dict[str, list[bytes]]],
                  client: str = "", recover: tuple[str, int] | None = None) -> Deferred[Any]:
        ids = self.controller.targets(sorted(namespaces))
        names = ", ".join(sorted({k for ns in namespaces.values() for k in ns}))
        entry = self.commands.record("push_each", ids, client, values=namespaces)
        d = self._each(ids, "push", lambda e: (namespaces[e],), client, "push " + names,
                       recover)
        return d.addCallback(self.commands.finish, entry)

    def apply_each(self, func: list[bytes], args: dict[int, list[bytes]],
                   client: str = "", recover: tuple[str, int] | None = None) -> Deferred[Any]:
        ids = self.controller.targets(sorted(args))
        entry = self.commands.record("apply", ids, client, description="apply/map")
        d = self._each(ids, "apply", lambda e: (func, args[e]), client, "apply", recover)
        return d.addCallback(self.commands.finish, entry)

    def kill(self, controller: bool = False, targets: Any = "all",
             client: str = "") -> Deferred[Any]:
        """End engines at once (never queued behind a running cell)."""
        # kill(controller=True, targets=[]) stops only the controller (its engines
        # then exit by themselves); with no engines left there is nothing to kill.
        if controller and (targets == [] or not self.controller.engines):
            ids: list[int] = []
        else:
            ids = self.controller.targets(targets)
        replies = []
        for engine_id in ids:
            d = self.controller.call_now(engine_id, "kill")
            d.addErrback(lambda f: None)  # the engine may go before it answers
            self.controller.unregister_engine(engine_id)
            replies.append({"engine_id": engine_id, "status": "ok", "value": None})
        if controller and self.service is not None:
            self.service.shutdown()
        return defer.succeed(replies)

    def restart(self, targets: Any = "all", client: str = "") -> Deferred[Any]:
        """Start engines afresh (new namespace, same id); fire once all are back.

        A supervised engine is ended and its supervisor starts it again (an
        MPI rank: its whole job); any other replaces itself in place.
        """
        ids = self.controller.targets(targets)
        records = [self.controller.engines[i] for i in ids]
        for record in records:
            if "mpi_rank" in record.info and not record.info.get("supervised"):
                raise KernelError(
                    f"engine {record.id} is MPI rank {record.info['mpi_rank']}: a single rank "
                    "cannot be restarted; start the cluster with --mpi --restart-engines, "
                    "whose supervisor restarts the whole job")
        back = self.controller.wait_registered(ids, RESTART_TIMEOUT)
        for record in records:
            d = self.controller.call_now(record.id, "kill" if record.info.get("supervised")
                                         else "restart")
            d.addErrback(lambda f: None)  # it may go before it answers
        return back.addCallback(lambda _: [{"engine_id": i, "status": "ok", "value": None}
                                           for i in ids])

    def interrupt(self, targets: Any = "all", client: str = "") -> Deferred[Any]:
        """Interrupt the running command of each target (never queued)."""
        ids = self.controller.targets(targets)
        ds = []
        for engine_id in ids:
            d = self.controller.call_now(engine_id, "interrupt")
            d.addCallback(lambda busy, e=engine_id: {"engine_id": e, "status": "ok",
                                                    "value": busy})
            d.addErrback(lambda f, e=engine_id: _failure_reply(e, f))
            ds.append(d)
        return defer.gatherResults(ds, consumeErrors=True)

    def debug_input(self, engine_id: int, line: str, client: str = "") -> Deferred[Any]:
        """Send a line to the debugger of engine_id: only the client that started it may."""
        command = self.controller.debugger_owner(engine_id)
        if command is None or command.client != client:
            raise PermissionDenied(f"engine {engine_id}'s debugger (if any) belongs to another "
                                   "client; debug with your own command (mec.debug)")
        self.controller.events.publish("debug_input", command.owner, engine_id,
                                       {"line": line[:200]}, client)
        return self.controller.control(engine_id, "debug_input", line)

    def logs(self, lines: int, targets: Any = "all", client: str = "") -> Deferred[Any]:
        """Return the last lines of each target's own log (never queued)."""
        lines = max(0, min(int(lines), MAX_LOG_LINES))
        ds = []
        for engine_id in self.controller.targets(targets):
            d = self.controller.control(engine_id, "logs", lines)
            d.addCallback(lambda text, e=engine_id: {"engine_id": e, "status": "ok",
                                                    "value": text})
            d.addErrback(lambda f, e=engine_id: _failure_reply(e, f))
            ds.append(d)
        return defer.gatherResults(ds, consumeErrors=True)

    def session_log(self) -> Deferred[Any]:
        return defer.succeed(self.commands.snapshot())

    def queue_status(self, targets: Any = "all") -> Deferred[Any]:
        return defer.succeed(self.controller.queue_status(self.controller.targets(targets)))

    def clear_queue(self, targets: Any = "all", client: str = "") -> Deferred[Any]:
        ids = self.controller.targets(targets)
        return defer.succeed(self.controller.clear_queue(ids, client))

    def open_transfer(self, engine_id: int, direction: str, blob_id: bytes, sizes: list[int],
                      client: str = "", host: str = "",
                      route: str = "") -> Deferred[dict[str, Any]]:
        """Set up a data-channel transfer with an engine (see ipython1.transport.data).

        A client on the engine's host as the engine's user (same host key)
        gets a local ticket instead, good for BOOK_USES transfers with that
        engine within BOOK_TTL: no relay, no TLS. One asking for the
        ``"direct"`` route gets a book as long for the engine's data port, if
        it has one (encrypted as this controller's data_encryption says:
        sealed frames, TLS records or, if off, not at all); otherwise a
        relayed transfer.
        """
        import secrets

        record = self.controller.engines.get(engine_id)
        relay = self.controller.relay
        if record is None:
            raise InvalidEngineID(f"no engine with id {engine_id}")
        local = record.info.get("local_data")
        if host and isinstance(local, dict) and local.get("host") == host:
            pairing_id, secret = secrets.token_bytes(16), secrets.token_bytes(32)
            d = record.connection.control("open_transfer", pairing_id, secret, 0, direction,
                                          blob_id, sizes)
            return d.addCallback(lambda _: {
                "pairing_id": pairing_id, "secret": secret, "uses": BOOK_USES, "ttl": BOOK_TTL,
                "local": {k: local[k] for k in ("socket", "pid", "uid")}})
        direct = record.info.get("direct_data")
        if route == "direct" and isinstance(direct, dict) and direct.get("host"):
            pairing_id, secret = secrets.token_bytes(16), secrets.token_bytes(32)
            mode = self.controller.data_encryption
            # Each stripe of a large transfer spends a use on the engine.
            d = record.connection.control("expect_transfers", pairing_id, secret,
                                          BOOK_USES * MAX_STREAMS, mode == "off")
            return d.addCallback(lambda _: {
                "pairing_id": pairing_id, "secret": secret, "uses": BOOK_USES, "ttl": BOOK_TTL,
                "direct": join_host_port(direct["host"], int(direct["port"])),
                "plain": mode == "off", "seal": mode == "sealed", "tubid": record.connection.tubid})
        if relay is None:
            raise KernelError("this controller has no data channel")
        pairing_id, secret = secrets.token_bytes(16), secrets.token_bytes(32)
        relay.expect(pairing_id, engine_id)
        d = record.connection.control("open_transfer", pairing_id, secret,
                                  int(relay.address.rsplit(":", 1)[1]), direction, blob_id, sizes)
        return d.addCallback(lambda _: {
            "pairing_id": pairing_id, "secret": secret, "relay_port": int(
                relay.address.rsplit(":", 1)[1]), "tubid": record.connection.tubid})

    def engine_info(self, targets: Any = "all") -> Deferred[Any]:
        """Answered by the controller: works while engines are busy."""
        return defer.succeed(self.controller.engine_info(self.controller.targets(targets)))

    # -- engine properties (IPython 0.10), kept here: see properties.py --

    def _each_properties(self, targets: Any, use: Any) -> list[dict[str, Any]]:
        out = []
        for engine_id in self.controller.targets(targets):
            try:
                value = use(self.controller.engines[engine_id].properties)
                out.append({"engine_id": engine_id, "status": "ok", "value": value})
            except KernelError as e:
                out.append({"engine_id": engine_id, "status": "error",
                            "error": error_to_wire(e, engine_id)})
        return out

    def get_properties(self, keys: Any = None, targets: Any = "all",
                       client: str = "") -> Deferred[Any]:
        """Fire with each target's properties (the named ones, or all)."""
        return defer.succeed(self._each_properties(
            targets, lambda props: properties.select(props, keys)))

    def update_properties(self, action: str, arg: Any = None, targets: Any = "all",
                          client: str = "") -> Deferred[Any]:
        """Set (arg: a dict), del (arg: names) or clear each target's properties."""
        out = self._each_properties(targets, lambda props: properties.update(props, action, arg))
        for reply in out:
            self.controller._notify("engine_properties", {"engine_id": reply["engine_id"]})
        return defer.succeed(out)


# What this module held before the session moved out (its old name is
# ipython1.kernel.multiengine).
_MOVED_OUT = {"MultiEngineSession": "multienginesession",
              "MultiEngineReferenceable": "multienginesession",
              "MAX_PENDING_PER_CLIENT": "multienginesession",
              "OBSERVER_ALLOWED": "multienginesession"}


def __getattr__(name: str) -> Any:
    """Re-export the session's names, imported only when asked for (it imports this)."""
    if name in _MOVED_OUT:
        return getattr(importlib.import_module(f"ipython1.controller.{_MOVED_OUT[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

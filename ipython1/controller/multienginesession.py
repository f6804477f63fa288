"""The multi-engine adapter on the wire: a client's session and the published adapter.

``MultiEngineReferenceable`` is published at the controller's FURL (and one
per named user); each client ``connect``s and gets its own
``MultiEngineSession`` (``RIMultiEngineSession``): every op of the table
(`ipython1.common.ops`) dispatched in ``doRemoteCall``, the permission and
observer rules, non-blocking results kept per session, subscriptions, the
session log.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ipython1.common import ops, replies
from ipython1.common.errors import (
    InvalidPendingResult,
    KernelError,
    PermissionDenied,
    ResultNotReady,
    error_to_wire,
)
from ipython1.common.interfaces import RIMultiEngine, RIMultiEngineSession
from ipython1.controller.backpressure import ReplyBackpressure
from ipython1.controller.events import remote_deliverer
from ipython1.controller.multiengine import MultiEngine
from ipython1.controller.queue import user_of
from ipython1.controller.recovered import valid_token
from ipython1.controller.subscribers import BoundedForwarder
from ipython1.controller.tasksession import TaskFarmSession
from ipython1.controller.users import list_users, permission_denied, transcript_tail
from ipython1.transport import channel as command_channel
from ipython1.transport import foolscap as foolscap_transport

log = Logger()


MAX_PENDING_PER_CLIENT = 100_000  # unfetched non-blocking results kept per client


# What an observer's session may do: watch, list and chat; nothing that runs
# code, moves data or changes state (every other command is refused).
OBSERVER_ALLOWED = ops.observer_allowed()


# Adapter methods that send engines their commands (with the tag of controller/recovered.py).
RECOVERABLE = frozenset({"execute", "push", "push_each", "apply_each", "run"})


def _kept_part(controller: Any, tag: str, engine_id: int, state: str) -> Deferred[Any]:
    """Fetch one engine's kept reply to a recovered call, or say why there is none."""
    from ipython1.common.errors import EngineError
    from ipython1.controller.recovered import KEPT

    def lost(why: str) -> dict[str, Any]:
        return {"engine_id": engine_id, "status": "error",
                "error": error_to_wire(EngineError(engine_id, why), engine_id)}

    record = controller.engines.get(engine_id)
    if state != KEPT or record is None:
        return defer.succeed(lost(f"engine {engine_id} died before its result of this call "
                                  "could be recovered"))
    d = record.connection.control("kept_result", tag)

    def answer(reply: Any) -> Any:
        if reply is not None:
            return reply
        return lost(f"engine {engine_id}'s reply was too large to keep for a restarted "
                    "controller, or dropped from the replies it keeps (the oldest go first; "
                    "for execute its record is in the engine's history: mec.get_result(n))")

    return d.addCallbacks(answer, lambda f: lost(f"engine {engine_id}: {f.getErrorMessage()}"))


def _missing_part(count: int) -> dict[str, Any]:
    return {"engine_id": None, "status": "error", "error": error_to_wire(KernelError(
        f"{count} engine(s) of this call gave no result: it had not started on them when "
        "the controller stopped (it was queued there), or they did not rejoin"))}


@implementer(RIMultiEngineSession)
class MultiEngineSession(Referenceable):  # type: ignore[misc]
    """One client's view of the multi-engine adapter, with its pending results."""

    _ids = itertools.count(1 << 40)  # pending ids of calls the client gave no id

    def __init__(self, adapter: MultiEngine, client: str, user: str = "",
                 kind: str = "owner", token: str = "") -> None:
        self.adapter = adapter
        self.client = client
        # The client object's name across reconnections: a restarted controller
        # finds its calls' results on the engines by it (controller/recovered.py).
        self.token = token
        self.user = user or user_of(client)
        self.kind = kind  # "owner", "full" or "observer"
        self.revoked = False
        self.subscription: Any = None
        self.pending: OrderedDict[int, Deferred[Any]] = OrderedDict()
        self.done: dict[int, Any] = {}
        self.done_bytes = 0  # of the results in done
        self.fetching: dict[int, Deferred[Any]] = {}  # blocked fetches, ended by a flush
        self.channel_end: Any = None  # its command channel, if it has one
        controller = adapter.controller
        self.backpressure = ReplyBackpressure(
            client, getattr(controller, "held_clients", set()),
            lambda: [r.queue.kick() for r in list(controller.engines.values())],
            self._transports, lambda: self.done_bytes)

    def _transports(self) -> list[Any]:
        ends = (getattr(self, "_broker", None), self.channel_end)
        return [e.transport for e in ends if getattr(e, "transport", None) is not None]

    def _reply_sent(self, reply: Any) -> Any:
        """Look at the unread replies before sending one more (backpressure)."""
        return self.backpressure.check(reply)

    def closed(self) -> None:
        """The client went away: drop its waiting commands and results (its own only)."""
        cleared = sum(r.queue.clear_client(self.client)
                      for r in list(self.adapter.controller.engines.values()))
        self.backpressure.close()
        self.pending.clear()
        self.done.clear()
        self.done_bytes = 0
        if cleared:
            log.info("client {c} went away: {n} of its queued command(s) dropped",
                     c=self.client, n=cleared)

    def _denied(self, method: str) -> PermissionDenied | None:
        """Say why this session may not run method, or None if it may."""
        return permission_denied(
            self.user, self.kind, self.revoked, method, OBSERVER_ALLOWED,
            "observers can watch events, read the transcript, list users and engines, and chat")

    def _call(self, block: bool, method: str, *args: Any, op: str = "", call: int = 0,
              **kwargs: Any) -> Deferred[Any]:
        denied = self._denied(op or method)
        if denied is not None:
            return self._refuse(op or method, denied)  # before anything is queued
        if not block and len(self.pending) >= MAX_PENDING_PER_CLIENT:
            # Refuse before running anything rather than grow without bound.
            return defer.succeed(self._raise_as_data(Failure(KernelError(
                f"{len(self.pending)} non-blocking results are waiting to be fetched; "
                "fetch some with get_result() before issuing more"))))
        if not block and call in self.pending:
            return defer.succeed(self._raise_as_data(Failure(KernelError(
                f"call id {call} is in use by a result not fetched yet"))))
        if call > 0 and self.token and method in RECOVERABLE:
            kwargs["recover"] = (self.token, call)
        d = defer.maybeDeferred(getattr(self.adapter, method), *args, client=self.client,
                                **kwargs)
        d.addErrback(self._raise_as_data)
        d.addCallback(replies.pack)  # the engines' bytes, relayed as they are
        if block:
            return d.addCallback(self._reply_sent)
        pending_id = call if call > 0 else next(self._ids)
        self.pending[pending_id] = d
        d.addBoth(self._store, pending_id)
        return defer.succeed({"pending_id": pending_id})

    def _refuse(self, op: str, denied: PermissionDenied) -> Deferred[Any]:
        """Answer PermissionDenied, and say so in the event stream."""
        self.adapter.controller.events.publish(
            "denied", self.user, None, {"op": op, "reason": str(denied)}, self.client)
        return defer.succeed(self._raise_as_data(Failure(denied)))

    def _store(self, result: Any, pending_id: int) -> None:
        if pending_id in self.pending:
            self.done[pending_id] = result
            self.done_bytes += len(result) if isinstance(result, bytes) else 0
            self.backpressure.check()

    def _fetched(self, pending_id: int) -> Any:
        result = self.done.pop(pending_id)
        self.done_bytes -= len(result) if isinstance(result, bytes) else 0
        return self._reply_sent(result)

    @staticmethod
    def _raise_as_data(failure: Failure) -> dict[str, Any]:
        """Errors before anything was queued (bad targets...) as an error reply."""
        return {"engine_id": None, "status": "error", "error": error_to_wire(failure.value)}

    def doRemoteCall(self, methodname: str, args: Any, kwargs: Any) -> Any:
        """Run a command of the op table (Foolscap and the command channel call this)."""
        entry = ops.OPS.get(methodname)
        if entry is None or not entry.session:
            return super().doRemoteCall(methodname, args, kwargs)
        names = RIMultiEngineSession[methodname].argumentNames
        if kwargs:  # checked by the schema: every argument but call is there, some by name
            args = (*args, *(kwargs[name] for name in names[len(args):] if name in kwargs))
        *op_args, targets, block, call = args if len(args) == len(names) else (*args, 0)
        if hasattr(self.adapter, methodname):  # execute, push: logged with their code, values
            return self._call(block, methodname, *op_args, targets, call=call)
        return self._call(block, "run", methodname, tuple(op_args), targets, op=methodname,
                          call=call)

    def remote_get_ids(self) -> Deferred[Any]:
        return self.adapter.get_ids()

    def remote_open_command_channel(self, host: str) -> dict[str, Any] | None:
        """Offer this session over the local command channel to a client on this host."""
        return command_channel.offer_to_client(self.adapter.controller.command_channels,
                                              self, host)

    def remote_push_each(self, namespaces: dict[int, Any], block: bool,
                         call: int = 0) -> Deferred[Any]:
        return self._call(block, "push_each", namespaces, call=call)

    def remote_apply_each(self, func: list[bytes], args: dict[int, Any],
                          block: bool, call: int = 0) -> Deferred[Any]:
        return self._call(block, "apply_each", func, args, call=call)

    def remote_kill(self, controller: bool, targets: Any, block: bool,
                    call: int = 0) -> Deferred[Any]:
        if controller and self.kind != "owner" and not self.revoked:
            # Stopping the controller ends everyone's sessions: the owner's call.
            return self._refuse("kill", PermissionDenied(
                f"user {self.user!r} may not stop the controller (only the owner may); "
                "nothing was killed"))
        return self._call(block, "kill", controller, targets, call=call)

    def remote_restart(self, targets: Any, block: bool, call: int = 0) -> Deferred[Any]:
        return self._call(block, "restart", targets, call=call)

    def remote_interrupt(self, targets: Any) -> Deferred[Any]:
        return self._call(True, "interrupt", targets)

    def remote_logs(self, lines: int, targets: Any) -> Deferred[Any]:
        return self._call(True, "logs", lines, targets)

    def remote_debug_input(self, engine_id: int, line: str) -> Deferred[Any]:
        return self._call(True, "debug_input", engine_id, line)

    def remote_queue_status(self, targets: Any) -> Deferred[Any]:
        if self.revoked:
            return defer.succeed(self._raise_as_data(Failure(self._denied("queue_status"))))
        d = defer.maybeDeferred(self.adapter.queue_status, targets)
        return d.addCallbacks(replies.pack, self._raise_as_data)  # SessionReply

    def remote_clear_queue(self, targets: Any) -> Deferred[Any]:
        return self._call(True, "clear_queue", targets)

    def remote_open_transfer(self, engine_id: int, direction: str, blob_id: bytes,
                             sizes: list[int], host: str = "",
                             route: str = "") -> Deferred[Any]:
        denied = self._denied("open_transfer")  # moves data: not for observers
        if denied is not None:
            return defer.succeed(self._raise_as_data(Failure(denied)))
        d = defer.maybeDeferred(self.adapter.open_transfer, engine_id, direction, blob_id, sizes,
                                host=host, route=route)
        return d.addErrback(self._raise_as_data)

    def remote_engine_info(self, targets: Any) -> Deferred[Any]:
        d = defer.maybeDeferred(self.adapter.engine_info, targets)
        return d.addCallbacks(replies.pack, self._raise_as_data)  # SessionReply

    def remote_get_pending_result(self, pending_id: int, block: bool) -> Deferred[Any]:
        if pending_id not in self.pending and self.token:
            recovered = self.adapter.controller.recovered
            if recovered.knows(self.token, pending_id):  # sent before a controller restart
                return self._recovered_result(pending_id, block)
        if pending_id not in self.pending:
            restarted = self.token and self.adapter.controller.recovered.restarted
            return defer.succeed(self._raise_as_data(Failure(InvalidPendingResult(
                f"no pending result with id {pending_id} (unknown, or already fetched" +
                ("; or, sent before the controller restarted, it had not started on any "
                 "engine when the controller stopped)" if restarted else ")")))))
        if pending_id in self.done:
            del self.pending[pending_id]
            return defer.succeed(self._fetched(pending_id))
        if not block:
            return defer.succeed(self._raise_as_data(Failure(ResultNotReady(
                f"result {pending_id} is not ready yet"))))
        d: Deferred[Any] = Deferred()

        def deliver(_: Any) -> None:
            self.pending.pop(pending_id, None)
            d.callback(self._fetched(pending_id))
            self.fetching.pop(pending_id, None)
            if not d.called:  # else flushed meanwhile: answered already
                d.callback(self.done.pop(pending_id))

        self.fetching[pending_id] = d
        self.pending[pending_id].addBoth(deliver)
        return d

    def _recovered_result(self, call: int, block: bool) -> Deferred[Any]:
        """Gather a call of the last controller from the engines that keep its parts."""
        controller = self.adapter.controller
        recovered = controller.recovered
        if not block and not recovered.complete(self.token, call):
            return defer.succeed(self._raise_as_data(Failure(ResultNotReady(
                f"result {call} is not ready yet (its engines are finishing it, or have not "
                "rejoined the restarted controller yet)"))))

        def gather(found: Any) -> Any:
            if found is None:
                raise InvalidPendingResult(
                    f"no engine kept a result of call {call}: it had not started when the "
                    "controller stopped, or was fetched already")
            tag, parts = found
            recovered.forget(self.token, call)
            return defer.gatherResults([_kept_part(controller, tag, engine_id, state)
                                        for engine_id, state in sorted(parts.parts.items())]
                                       + [defer.succeed(_missing_part(parts.missing))
                                          for _ in range(parts.missing)],
                                       consumeErrors=True)

        d = recovered.wait(self.token, call).addCallback(gather)
        d.addErrback(self._raise_as_data)
        return d.addCallback(replies.pack).addCallback(self._reply_sent)

    def remote_pending_ids(self) -> list[int]:
        return list(self.pending)

    def remote_clear_pending_results(self) -> int:
        """Drop this session's unfetched results (flush()); return how many."""
        n = len(self.pending)
        self.pending.clear()
        self.done.clear()
        fetching, self.fetching = self.fetching, {}
        for pending_id, d in fetching.items():  # a fetch blocked on one ends now
            d.callback(self._raise_as_data(Failure(InvalidPendingResult(
                f"result {pending_id} was flushed before it was fetched"))))
        return n

    def remote_get_properties(self, keys: Any, targets: Any, block: bool,
                              call: int = 0) -> Deferred[Any]:
        return self._call(block, "get_properties", keys, targets, call=call)

    def remote_update_properties(self, action: str, arg: Any, targets: Any,
                                 block: bool, call: int = 0) -> Deferred[Any]:
        return self._call(block, "update_properties", action, arg, targets, call=call)

    def remote_session_log(self) -> Deferred[Any]:
        # Every user's code and pushed values: not for observers.
        denied = self._denied("session_log")
        if denied is not None:
            return self._refuse("session_log", denied)
        return self.adapter.session_log().addCallback(replies.pack)  # SessionReply

    def remote_subscribe_output(self, observer: Any, own_only: bool) -> None:
        """Forward live engine output (only this client's commands if own_only)."""
        self.remote_unsubscribe_output()


        def send(data: dict[str, Any]) -> Deferred[Any]:
            d = foolscap_transport.call(observer, "output", data)
            return d.addErrback(lambda f: (self._drop_forward(forward), f)[1])

        # Bounded, and waited for only by this client's own commands while it
        # keeps up: a stalled subscriber slows no one (see subscribers).
        forwarder = BoundedForwarder(send)

        def forward(kind: str, data: dict[str, Any]) -> Deferred[None] | None:
            if kind != "output" or (own_only and data.get("client") != self.client):
                return None
            return forwarder.offer(data, wait=data.get("client") == self.client)

        self._forward = forward
        self.adapter.controller.add_observer(forward)
        observer.notifyOnDisconnect(self._drop_forward, forward)

    def _drop_forward(self, forward: Any) -> None:
        self.adapter.controller.remove_observer(forward)
        if getattr(self, "_forward", None) is forward:
            self._forward = None

    def remote_unsubscribe_output(self) -> None:
        forward = getattr(self, "_forward", None)
        if forward is not None:
            self._drop_forward(forward)


    # -- collaboration (issue 8): see ipython1.controller.userdir --

    def remote_whoami(self) -> dict[str, Any]:
        return {"user": self.user, "kind": self.kind, "client": self.client}

    def remote_users(self) -> Any:
        return replies.pack(list_users(self.adapter))  # SessionReply

    def remote_say(self, text: str) -> Any:
        if self.revoked:
            return self._raise_as_data(Failure(self._denied("say")))
        self.adapter.controller.events.publish("chat", self.user, None,
                                               {"text": text[:10_000]}, self.client)
        return None

    def remote_subscribe_events(self, observer: Any, history: int) -> Any:
        """Send events to observer.events(batch): recent history first, then live.

        Answers {"seq": n}: the events numbered up to n are the history.
        """
        if self.revoked:
            return self._raise_as_data(Failure(self._denied("subscribe")))
        self.remote_unsubscribe_events()
        bus = self.adapter.controller.events
        self.subscription = bus.subscribe(remote_deliverer(observer), self.client,
                                          max(0, min(history, 1000)))
        observer.notifyOnDisconnect(bus.unsubscribe, self.subscription)
        return {"seq": bus.last_seq}  # events up to this one are history

    def remote_unsubscribe_events(self) -> None:
        if self.subscription is not None:
            self.adapter.controller.events.unsubscribe(self.subscription)
            self.subscription = None

    def remote_transcript(self, user: str | None, last: int) -> Any:
        if user is not None and not isinstance(user, str):
            return self._raise_as_data(Failure(KernelError("user must be a name or None")))
        return replies.pack(transcript_tail(self.adapter, user, last))  # SessionReply

    def remote_connect_tasks(self, info: Any) -> Any:
        """Open a task farm session acting as this session's user (and kind)."""
        if self.revoked:
            return self._raise_as_data(Failure(self._denied("connect_tasks")))
        farm = getattr(self.adapter.service, "adapters", {}).get("task")
        if farm is None:
            return self._raise_as_data(Failure(KernelError(
                "this controller has no task farm")))
        return {"status": "ok",
                "value": TaskFarmSession(farm, self.client, self.user, self.kind, self)}


@implementer(RIMultiEngine)
class MultiEngineReferenceable(Referenceable):  # type: ignore[misc]
    """The client-facing FURL: each client connects and gets a session."""

    _client_ids = itertools.count(1)

    def __init__(self, adapter: MultiEngine, user: str | None = None,
                 kind: str = "owner") -> None:
        self.adapter = adapter
        self.user = user  # None: the owner, who started the cluster
        self.kind = kind

    def remote_connect(self, info: Any) -> MultiEngineSession:
        # Everything done through this session is attributed to its user.
        user = self.user or self.adapter.controller.owner
        where = info if isinstance(info, dict) else {}
        self.adapter.controller.check_versions(
            where, f"the client pid {where.get('pid')} on {where.get('host')}")
        debugger = where.pop("debugger", None)  # the client's remote-pdb observer
        token = where.pop("client_token", "")
        session = MultiEngineSession(self.adapter, f"{user}/client-{next(self._client_ids)}",
                                     user, self.kind, token if valid_token(token) else "")
        if debugger is not None and foolscap_transport.is_reference(debugger):
            self.adapter.controller.debug_clients[session.client] = debugger
        directory = getattr(self.adapter, "directory", None)
        if directory is not None:
            directory.session_opened(session, info, self)
        return session

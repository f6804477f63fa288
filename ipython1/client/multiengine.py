"""AsyncMultiEngineClient: the multi-engine interface, every method a Deferred.

Opened by `ipython1.client.connect.get_multiengine_client`; its non-blocking
results are in `asyncpending`.

Values are serialized here, on the client, and deserialized here: the
controller only relays frames. Replies are turned into results or into
RemoteError / CompositeError / EngineError.
"""

from __future__ import annotations

import getpass
import importlib
import itertools
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ipython1.client import transfer
from ipython1.client.asyncpending import (
    AsyncPendingResult,
    _join,
    _JoiningPending,
    _StdoutPending,
    _then,
    _then_join,
    call_with_stdout,
)
from ipython1.client.events import EventObserver
from ipython1.client.output import OutputObserver
from ipython1.client.parallel import Mapper, Parallel
from ipython1.client.parallel import raw_map as _raw_map
from ipython1.client.reconnect import IN_FLIGHT_HINT, Reconnector, channel_closed
from ipython1.client.results import ExecuteResult, ResultList
from ipython1.client.tasks import AsyncTaskClient
from ipython1.common import replies, wire
from ipython1.common import scatter as scatter_mod
from ipython1.common.addresses import join_host_port
from ipython1.common.errors import (
    CompositeError,
    ConnectionLost,
    KernelError,
    NoEnginesRegistered,
    error_from_wire,
)
from ipython1.common.properties import check_plain
from ipython1.common.serialize import deserialize, serialize, serialize_dict
from ipython1.common.versions import local_versions
from ipython1.transport import channel as command_channel
from ipython1.transport import foolscap as foolscap_transport
from ipython1.transport import tcpchannel
from ipython1.transport.data import local, refs
from ipython1.transport.data.stream import direct_enabled

_map_chunk = scatter_mod.map_chunk  # its old name
# Events asked for again when a subscription is renewed after a lost connection
# (the controller keeps at most this many).
RENEWED_HISTORY = 1000


def _first_error(failure: Failure) -> Failure:
    """Give the error of the first failed transfer, not gatherResults' wrapper."""
    failure.trap(defer.FirstError)
    return failure.value.subFailure  # type: ignore[no-any-return]


def _identity(value: Any) -> Any:
    return value


def _none(value: Any) -> None:
    return None


def _execute_record(record: dict[str, Any]) -> ExecuteResult:
    return ExecuteResult(record)


def _deserialize_list(frames_list: list[list[bytes]]) -> list[Any]:
    return [deserialize(frames) for frames in frames_list]


# Calls that change nothing (or fetch a result the restarted controller gathers
# again from the engines): sent again when the controller is back if the
# connection was lost with them in flight (issue 15).
RESENT_AFTER_LOSS = frozenset({
    "get_pending_result", "get_ids", "queue_status", "engine_info", "pending_ids",
    "whoami", "users", "transcript", "session_log", "logs"})


class AsyncMultiEngineClient:
    """The multi-engine interface over Foolscap; every method returns a Deferred."""

    def __init__(self, session: Any, tub: Any = None, furl: str = "",
                 channel: Any = None, token: str = "") -> None:
        self._session = session
        # This object's name for the controller, kept across reconnections, and
        # its ids for its commands: a restarted controller finds their results
        # on the engines by them (controller/recovered.py).
        self.token = token or secrets.token_hex(16)
        self._call_ids = itertools.count(1)
        self._channel = channel  # transport.channel.ClientEnd: this session over a local socket
        # Subscriptions take Foolscap, commands the channel: one order for both.
        self._calls = command_channel.session_connection(session, channel)
        self._tub = tub
        self.furl = furl
        self._lost: str | None = None
        self._finishers: dict[int, Callable[[list[dict[str, Any]]], Any]] = {}
        self._relay_only: set[int] = set()  # engines whose local socket is out of reach
        self._no_direct: set[int] = set()  # engines whose data port is out of reach
        self._books: dict[int, transfer.TicketBook] = {}  # local or direct tickets, by engine
        # Set by get_multiengine_client: reopens the session once the controller is back.
        self.reconnector: Reconnector | None = None
        # Handles engine pdb prompts (engine id, text); the blocking client sets it.
        self.on_debugger: Callable[[int, str], None] | None = None
        # Live output and event subscriptions, renewed on a reopened session.
        self._observer: Any = None
        self._own_only = True
        self._event_observer: Any = None
        self._calls.notifyOnDisconnect(self._disconnected)

    def _disconnected(self, *args: Any) -> None:
        self._lost = f"the connection to the controller at {wire.furl_location(self.furl)} was lost"
        if self.reconnector is not None and (self._observer or self._event_observer):
            # A client that only listens makes no call that would reconnect it.
            self.reconnector.ensure().addErrback(lambda f: None)

    def _reconnected(self, opened: tuple[Any, Any, Any]) -> None:
        """Take the session reopened after a restart; renew its subscriptions first."""
        if self._tub is not None:
            self._tub.stopService()
        self._tub, self._session, self._channel = opened
        self._calls = command_channel.session_connection(self._session, self._channel)
        self._books.clear()
        self._relay_only.clear()
        self._no_direct.clear()
        self._lost = None
        self._calls.notifyOnDisconnect(self._disconnected)
        if self._observer is not None:
            self._remote("subscribe_output", self._observer, self._own_only).addErrback(
                lambda f: None)
        if self._event_observer is not None:
            # The bus's history too: what happened before this client was back
            # (the observer skips what it has already seen).
            self._remote("subscribe_events", self._event_observer, RENEWED_HISTORY).addErrback(
                lambda f: None)

    @property
    def connected(self) -> bool:
        return self._lost is None

    @property
    def local_channel(self) -> bool:
        """Tell whether commands take the controller's local command channel."""
        return self._calls.local

    def _remote(self, method: str, *args: Any) -> Deferred[Any]:
        if self._lost is None and channel_closed(self._channel):
            self._disconnected()  # the controller is gone; Foolscap may not know yet
        if self._lost is not None:
            if self.reconnector is None:
                return defer.fail(ConnectionLost(self._lost))
            # Wait for the controller to come back, then send it (issue 15).
            return self.reconnector.ensure().addCallback(lambda _: self._remote(method, *args))
        d = self._calls.call(method, args)
        d.addCallbacks(replies.unpack, self._translate_failure)
        if method in RESENT_AFTER_LOSS:
            d.addErrback(self._again_after_loss, method, *args)
        return d

    def _translate_failure(self, failure: Failure) -> Failure:
        if failure.check(KernelError):
            return failure
        from foolscap.api import DeadReferenceError
        from twisted.internet.error import ConnectionDone
        from twisted.internet.error import ConnectionLost as TwistedLost

        if failure.check(DeadReferenceError, ConnectionDone, TwistedLost) or self._lost:
            error = ConnectionLost((self._lost or f"the controller went away: "
                                    f"{failure.getErrorMessage()}") + "; " + IN_FLIGHT_HINT)
            error.in_flight = True  # type: ignore[attr-defined]
            raise error
        return failure

    def _again_after_loss(self, failure: Failure, method: str, *args: Any) -> Any:
        """Call method once the controller is back, if failure is a loss in flight.

        A command's result, and a pending result being fetched, come from the
        restarted controller, which gathers them from the engines (issue 15).
        """
        if self.reconnector is None or not getattr(failure.value, "in_flight", False):
            return failure
        d = self._remote(method, *args)
        if method != "get_pending_result":
            return d

        def unknown_after_all(reply: Any) -> Any:
            # The controller has no trace of it (it stayed up and dropped the session's
            # results, or the call never reached it): it may or may not have run.
            error = reply.get("error") if isinstance(reply, dict) else None
            if isinstance(error, dict) and error.get("ename") == "InvalidPendingResult" \
                    and "had not started" not in str(error.get("evalue")):
                return failure
            return reply  # a restarted controller knows: it had not started anywhere

        return d.addCallback(unknown_after_all)

    def _command(self, method: str, args: tuple[Any, ...], block: bool,
                 transform: Callable[[Any], Any], single: bool) -> Deferred[Any]:
        """Send a command; finish its replies now, or return a pending result."""

        def finish(replies: Any) -> Any:
            return _finish_replies(replies, transform, single)

        call = next(self._call_ids)
        d = self._remote(method, *args, block, call)
        if block:
            d.addErrback(self._again_after_loss, "get_pending_result", call, True)
            return d.addCallback(self._fetch_blobs).addCallback(finish)

        def pending(answer: Any) -> AsyncPendingResult:
            if isinstance(answer, dict) and "pending_id" in answer:
                self._finishers[answer["pending_id"]] = finish
                return AsyncPendingResult(self, answer["pending_id"], finish)
            finish(answer)  # an immediate error reply raises here
            raise KernelError(f"unexpected answer {answer!r}")

        def sent_maybe(failure: Failure) -> Any:
            # Lost in flight: its result, if it ran, is fetched by its id once the
            # controller is back (see get_pending_result); else that fetch says so.
            if self.reconnector is None or not getattr(failure.value, "in_flight", False):
                return failure
            return {"pending_id": call}

        return d.addErrback(sent_maybe).addCallback(pending)

    # -- the data channel: large values go beside Foolscap --

    def _keep(self, engine_id: int, ticket: dict[str, Any]) -> dict[str, Any]:
        """Keep a same-host or direct ticket's other uses for the next transfers with engine_id."""
        if ticket.get("uses", 1) > 1:
            book = transfer.TicketBook(ticket)
            book.spend()
            self._books[engine_id] = book
        return ticket

    def _ticket(self, answer: Any) -> dict[str, Any]:
        answer = _check_global_error(answer)
        if "relay_port" not in answer:
            return dict(answer)
        host = wire.peer_host(self._session, self.furl)  # the relay is beside the Tub
        return dict(answer, relay=join_host_port(host, answer["relay_port"]))

    def _transfer(self, engine_id: int, direction: str, blob_id: bytes, sizes: list[int],
                  frames: list[bytes] | None = None, fresh: bool = False,
                  accepted: Callable[[], None] | None = None) -> Deferred[Any]:
        """Open a transfer and run it on a worker thread: same-host, direct, else relayed.

        A same-host or direct ticket is good for several transfers: those
        need no round trip to the controller. An engine whose local socket or
        data port cannot be reached is remembered: the relay from then on.
        """
        from twisted.internet import threads

        def run(ticket: dict[str, Any]) -> Deferred[Any]:
            return threads.deferToThread(transfer.client_transfer, dict(ticket, blob_id=blob_id),
                                         frames=frames, sizes=sizes, accepted=accepted)

        def again(failure: Failure) -> Deferred[Any]:
            return self._transfer(engine_id, direction, blob_id, sizes, frames, True, accepted)

        book = self._books.get(engine_id)
        if not fresh and book is not None and book.spend():
            def stale(failure: Failure) -> Deferred[Any]:
                if self._books.get(engine_id) is book:
                    del self._books[engine_id]
                # A new engine with this id? Ask the controller again.
                failure.trap(refs.LocalUnavailable, refs.DirectUnavailable)
                return again(failure)

            return run(book.ticket).addErrback(stale)
        host = "" if engine_id in self._relay_only else local.host_key()
        route = "direct" if engine_id not in self._no_direct and direct_enabled() else ""
        d = self._remote("open_transfer", engine_id, direction, blob_id, sizes, host, route)
        d.addCallback(self._ticket).addCallback(lambda ticket: run(self._keep(engine_id, ticket)))

        def unreachable(failure: Failure) -> Deferred[Any]:
            # Another network namespace, a firewall: the relay gets there.
            failure.trap(refs.LocalUnavailable, refs.DirectUnavailable)
            gone = (self._relay_only if failure.check(refs.LocalUnavailable)
                    else self._no_direct)
            gone.add(engine_id)
            self._books.pop(engine_id, None)
            return again(failure)

        return d.addErrback(unreachable)

    def _upload(self, engine_id: int, frames: list[bytes],
                landings: list[Deferred[Any]] | None = None) -> Deferred[list[bytes]]:
        """Send a large value to an engine's blob store; fire with its reference.

        With landings, fire as soon as the engine has accepted the upload
        (same host: it then holds a command using the value until the bytes
        are in), and append a Deferred for the end of the upload to landings.
        """
        blob_id = refs.new_blob_id()
        sizes = [len(f) for f in frames]
        ref = refs.blob_ref(blob_id, sizes)
        if landings is None:
            return self._transfer(engine_id, "upload", blob_id, sizes, frames).addCallback(
                lambda _: ref)
        from twisted.internet import reactor

        early: Deferred[list[bytes]] = Deferred()

        def accepted() -> None:  # on the transfer's thread
            reactor.callFromThread(lambda: early.called or early.callback(ref))

        def ended(result: Any) -> Any:
            if early.called:
                return result  # a failure now is the upload's own, after the command went
            if isinstance(result, Failure):
                early.errback(result)
                return None
            early.callback(ref)  # relayed: accepted means received
            return result

        landings.append(self._transfer(engine_id, "upload", blob_id, sizes, frames,
                                       accepted=accepted).addBoth(ended))
        return early

    def _download(self, engine_id: int, ref: tuple[bytes, list[int]]) -> Deferred[Any]:
        blob_id, sizes = ref
        return self._transfer(engine_id, "download", blob_id, sizes)

    def _ship_then(self, namespaces: dict[int, dict[str, list[bytes]]], block: bool,
                   command: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        """Upload the large values of namespaces, then send the command using them.

        Blocking, the command goes as soon as every engine has accepted its
        uploads, while the bytes are still on their way (same host); the call
        ends when both are done, and an upload's error wins over the command's.
        """
        if not block:
            return self._ship(namespaces).addCallback(command)
        landings: list[Deferred[Any]] = []
        d = self._ship(namespaces, landings).addCallback(command)

        def landed(result: Any) -> Deferred[Any]:
            def report(outcomes: list[tuple[bool, Any]]) -> Any:
                if isinstance(result, Failure):
                    for ok, value in outcomes:
                        if not ok:
                            return value
                return result  # the command used every value: they all arrived

            return defer.DeferredList(landings, consumeErrors=True).addCallback(report)

        return d.addBoth(landed)

    def _ship(self, namespaces: dict[int, dict[str, list[bytes]]],
              landings: list[Deferred[Any]] | None = None) -> Deferred[Any]:
        """Upload the large values of per-engine namespaces; fire with references."""
        ds = []
        for engine_id, ns in namespaces.items():
            for key, frames in ns.items():
                if refs.is_large(frames):
                    d = self._upload(engine_id, frames, landings)
                    d.addCallback(lambda ref, ns=ns, key=key: ns.__setitem__(key, ref))
                    ds.append(d)
        d = defer.gatherResults(ds, consumeErrors=True).addErrback(_first_error)
        return d.addCallback(lambda _: namespaces)

    def _fetch_blobs(self, replies: Any) -> Deferred[Any]:
        """Download the large values that replies refer to, in place."""
        ds = []
        for reply in replies if isinstance(replies, list) else ():
            if not isinstance(reply, dict) or reply.get("status") != "ok":
                continue
            value = reply.get("value")
            engine_id = reply["engine_id"]
            if _is_frames(value):
                slots = [(reply, "value", value)]
            elif isinstance(value, list) and value and all(_is_frames(v) for v in value):
                slots = [(value, i, v) for i, v in enumerate(value)]
            else:
                continue
            for holder, slot, frames in slots:
                ref = refs.parse_blob_ref(frames)
                if ref is not None:
                    d = self._download(engine_id, ref)
                    d.addCallback(lambda got, h=holder, s=slot: h.__setitem__(s, got))
                    ds.append(d)
        if not ds:
            return defer.succeed(replies)
        d = defer.gatherResults(ds, consumeErrors=True).addErrback(_first_error)
        return d.addCallback(lambda _: replies)

    # -- the multi-engine interface --

    def get_ids(self) -> Deferred[list[int]]:
        """Fire with the sorted ids of the registered engines."""
        return self._remote("get_ids")

    def execute(self, code: str, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Run code on targets; fire with one ExecuteResult per target."""
        if not isinstance(code, str):
            return defer.fail(TypeError(f"code must be a str, not {type(code).__name__}"))
        def record(rec: dict[str, Any]) -> ExecuteResult:
            return ExecuteResult({"input": code, **rec})

        return self._command("execute", (code, targets), block, record,
                             isinstance(targets, int))

    def push(self, namespace: dict[str, Any], targets: Any = "all",
             block: bool = True) -> Deferred[Any]:
        """Bind the values of namespace to its names on targets."""
        try:
            # A blocking push may send large buffers straight from the caller's
            # memory: the call returns only once they have been sent.
            frames = _wire_frames(serialize_dict(_check_namespace(namespace), max_frame=None,
                                                 copy=not block))
        except Exception as e:
            return defer.fail(e)
        return self._push_frames(frames, targets, block)

    def _push_frames(self, frames: dict[str, list[Any]], targets: Any,
                     block: bool) -> Deferred[Any]:
        """Push serialized values; large ones take the data channel."""
        if not any(refs.is_large(f) for f in frames.values()):
            return self._command("push", (frames, targets), block, _none, True)
        d = self._ids(targets)
        return d.addCallback(lambda ids: self._ship_then(
            {e: dict(frames) for e in ids}, block,
            lambda ns: self._command("push_each", (ns,), block, _none, True)))

    push_function = push

    def pull(self, keys: str | Sequence[str], targets: Any = "all",
             block: bool = True) -> Deferred[Any]:
        """Fetch the values of one name (or several) from targets."""
        names = [keys] if isinstance(keys, str) else list(keys)
        if not all(isinstance(k, str) for k in names):
            return defer.fail(TypeError(f"keys must be a str or a list of str, not {keys!r}"))
        if isinstance(keys, str):
            def transform(value: Any) -> Any:
                return deserialize(value[0])
        else:
            transform = _deserialize_list
        return self._command("pull", (names, targets), block, transform,
                             isinstance(targets, int))

    pull_function = pull

    def get_result(self, n: int | None = None, targets: Any = "all",
                   block: bool = True) -> Deferred[Any]:
        """Fetch an earlier ExecuteResult by execution number (default: the last)."""
        return self._command("get_result", (n, targets), block, _execute_record,
                             isinstance(targets, int))

    def keys(self, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """List the names in each target's namespace."""
        return self._command("keys", (targets,), block, _identity, isinstance(targets, int))

    def reset(self, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Clear each target's namespace and history."""
        return self._command("reset", (targets,), block, _none, True)

    def kill(self, controller: bool = False, targets: Any = "all",
             block: bool = True) -> Deferred[Any]:
        """End engines at once; with controller=True, the controller too."""
        return self._command("kill", (controller, targets), block, _none, True)

    def restart(self, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Start engines afresh (new namespace, same id); fire once they are back."""
        return self._command("restart", (targets,), block, _none, False)

    def interrupt(self, targets: Any = "all") -> Deferred[Any]:
        """Raise KeyboardInterrupt in the code running on targets."""
        d = self._remote("interrupt", targets)
        return d.addCallback(_finish_replies, _identity, isinstance(targets, int))

    def logs(self, targets: Any = "all", lines: int = 100) -> Deferred[Any]:
        """Fire with the last lines of each target's own log (a list of lines per engine)."""
        d = self._remote("logs", lines, targets)
        return d.addCallback(_finish_replies, _identity, isinstance(targets, int))

    def queue_status(self, targets: Any = "all") -> Deferred[Any]:
        """Fire with each target's queue: the running command and the waiting ones."""
        d = self._remote("queue_status", targets)
        return d.addCallback(_check_global_error)

    def clear_queue(self, targets: Any = "all") -> Deferred[Any]:
        """Drop each target's waiting commands (they fail with QueueCleared)."""
        return self._remote("clear_queue", targets).addCallback(_check_global_error)

    def engine_info(self, targets: Any = "all") -> Deferred[Any]:
        """Fire with each target's properties: engine_id, pid, mpi_rank, mpi_size..."""
        return self._remote("engine_info", targets).addCallback(_check_global_error)

    def apply(self, func: Callable[..., Any], *args: Any, targets: Any = "all",
              block: bool = True, **kwargs: Any) -> Deferred[Any]:
        """Call func(*args, **kwargs) on each target; fire with the return values."""
        d = self._ids(targets)

        def send(ids: list[int]) -> Deferred[Any]:
            arg_frames = serialize((args, kwargs))
            return self._apply_each(serialize(func), dict.fromkeys(ids, arg_frames), block,
                                    isinstance(targets, int))

        return d.addCallback(send)

    def _apply_each(self, func: list[bytes], args: dict[int, list[bytes]], block: bool,
                    single: bool) -> Deferred[Any]:
        """Send apply_each, with large per-engine arguments over the data channel."""
        return self._ship_then({e: {"args": a} for e, a in args.items()}, block, lambda ns: (
            self._command("apply_each", (func, {e: v["args"] for e, v in ns.items()}), block,
                          deserialize, single)))

    def scatter(self, key: str, seq: Any, targets: Any = "all", flatten: bool = False,
                block: bool = True) -> Deferred[Any]:
        """Split seq as evenly as possible and bind one part to key on each target."""
        d = self._ids(targets)

        def send(ids: list[int]) -> Deferred[Any]:
            parts = scatter_mod.partitions(seq, len(ids), flatten=flatten)
            namespaces = {e: _wire_frames({key: serialize(part, max_frame=None,
                                                          copy=not block)})
                          for e, part in zip(ids, parts, strict=True)}
            return self._ship_then(namespaces, block, lambda ns: self._command(
                "push_each", (ns,), block, _none, True))

        return d.addCallback(send)

    def gather(self, key: str, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Pull key from each target and join the parts in target order."""
        d = self.pull(key, targets=targets, block=block)
        if not block:
            return d.addCallback(_then_join)
        return d.addCallback(lambda parts: _join(
            parts if isinstance(parts, list) and not isinstance(targets, int) else [parts]))

    def map(self, func: Callable[..., Any], *seqs: Sequence[Any], targets: Any = "all",
            block: bool = True) -> Deferred[Any]:
        """Apply func to the elements of seqs across targets; results in order."""
        return self._map(func, seqs, targets, block)

    def _map(self, func: Callable[..., Any], seqs: Sequence[Sequence[Any]], targets: Any,
             block: bool, keep_stdout: bool = False) -> Deferred[Any]:
        if not seqs:
            return defer.fail(TypeError("map() needs at least one sequence"))
        d = self._ids(targets)
        # keep_stdout: each engine's chunk runs inside call_with_stdout
        prefix: tuple[Any, ...] = (_map_chunk,) if keep_stdout else ()

        def send(ids: list[int]) -> Deferred[Any]:
            length = min(len(s) for s in seqs)
            parts = [scatter_mod.partitions(list(s)[:length], len(ids)) for s in seqs]
            func_frames = serialize(call_with_stdout if keep_stdout else _map_chunk)
            args = {e: serialize(((*prefix, func, *(p[i] for p in parts)), {}))
                    for i, e in enumerate(ids)}
            return self._apply_each(func_frames, args, block, False)

        def joined(result: Any) -> Any:
            if isinstance(result, AsyncPendingResult):
                if keep_stdout:
                    return _StdoutPending(result, single=False, join=True)
                return _JoiningPending(result)
            if keep_stdout:
                result = [chunk for chunk, _ in result]
            return [x for chunk in result for x in chunk]

        return d.addCallback(send).addCallback(joined)

    def get_pending_result(self, pending_id: int, block: bool = True) -> Deferred[Any]:
        """Fetch a non-blocking command's result by its id."""
        finish = self._finishers.pop(pending_id, lambda r: _finish_replies(r, _identity, False))
        return AsyncPendingResult(self, pending_id, finish).get_result(block)

    def pending_ids(self) -> Deferred[list[int]]:
        """Fire with the ids of this client's results not yet fetched."""
        return self._remote("pending_ids")

    def history(self, start: int | None = None, stop: int | None = None,
                targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Fire with each target's numbered inputs [[n, input], ...], start <= n < stop."""
        return self._command("history", (start, stop, targets), block, _identity,
                             isinstance(targets, int))

    def inspect(self, name: str, detail_level: int = 0, targets: Any = "all",
                block: bool = True) -> Deferred[Any]:
        """Fire with what `name?` (0) / `name??` (1) shows: {"data": {...}, "text": str}."""
        if not isinstance(name, str):
            return defer.fail(TypeError(f"name must be a str, not {type(name).__name__}"))
        if detail_level not in (0, 1) or isinstance(detail_level, bool):
            return defer.fail(ValueError(f"detail_level must be 0 or 1, not {detail_level!r}"))
        return self._command("inspect", (name, detail_level, targets), block, _identity,
                             isinstance(targets, int))

    def who(self, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Fire with the user's names on each target."""
        return self._command("who", (targets,), block, _identity, isinstance(targets, int))

    def whos(self, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Fire with each target's names, types and shapes: {"data": [...], "text": str}."""
        return self._command("whos", (targets,), block, _identity, isinstance(targets, int))

    def complete(self, text: str, line: str | None = None, cursor_pos: int | None = None,
                 targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Fire with IPython's completions on each target: {"text", "matches"}."""
        if not isinstance(text, str) or not isinstance(line, (str, type(None))):
            return defer.fail(TypeError("complete() takes text and line as str"))
        return self._command("complete", (text, line, cursor_pos, targets), block, _identity,
                             isinstance(targets, int))

    # -- remote pdb (engine.debugger) --

    def debug(self, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Run pdb post mortem on each target's last exception; prompts go to on_debugger."""
        return self._command("debug", (targets,), block, _identity, isinstance(targets, int))

    def debug_input(self, engine_id: int, line: str) -> Deferred[dict[str, Any]]:
        """Send a line to engine_id's debugger; fire with {"output", "waiting"}."""
        return self._remote("debug_input", engine_id, line).addCallback(_check_global_error)

    def debugger_waiting(self, engine_id: int, text: str) -> None:
        """An engine's pdb (opened by this client's command) waits for a line.

        Calls ``on_debugger(engine_id, text)`` if set; answer with debug_input.
        Without a handler, the debugger is told to quit.
        """
        if self.on_debugger is not None:
            self.on_debugger(engine_id, text)
        else:
            self.debug_input(engine_id, "quit").addErrback(lambda f: None)

    def ping(self, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Fire with each target's {"pid", "time"} once its queue reached the ping."""
        return self._command("ping", (targets,), block, _identity, isinstance(targets, int))

    def session_log(self) -> Deferred[list[dict[str, Any]]]:
        """Fire with the controller's record of the commands it ran (with pushed frames)."""
        return self._remote("session_log").addCallback(_check_global_error)

    def subscribe(self, callback: Callable[[int, str, str], None],
                  own_only: bool = True) -> Deferred[None]:
        """Call callback(engine_id, name, text) with live stdout/stderr as it is written.

        With own_only (the default) only the output of this client's commands
        comes; otherwise every command's. One subscription per client: a new
        one replaces the old.
        """
        self._observer = OutputObserver(callback)
        self._own_only = own_only
        return self._remote("subscribe_output", self._observer, own_only)

    def unsubscribe(self) -> Deferred[None]:
        """Stop live output."""
        self._observer = None
        return self._remote("unsubscribe_output")

    # -- more IPython 0.10 names (issue 20) --

    def push_serialized(self, namespace: dict[str, list[bytes]], targets: Any = "all",
                        block: bool = True) -> Deferred[Any]:
        """Bind already serialized values (serialize.serialize(value)) to their names."""
        try:
            _check_namespace(namespace)
            if not all(_is_frames(v) for v in namespace.values()):
                raise TypeError("push_serialized() takes {name: serialize(value)}")
        except Exception as e:
            return defer.fail(e)
        return self._push_frames(_wire_frames(dict(namespace)), targets, block)

    def pull_serialized(self, keys: str | Sequence[str], targets: Any = "all",
                        block: bool = True) -> Deferred[Any]:
        """Fetch names without deserializing them: frames (serialize.deserialize(frames))."""
        names = [keys] if isinstance(keys, str) else list(keys)
        if not all(isinstance(k, str) for k in names):
            return defer.fail(TypeError(f"keys must be a str or a list of str, not {keys!r}"))
        def transform(value: Any) -> Any:
            frames = [[bytes(f) for f in v] for v in value]
            return frames[0] if isinstance(keys, str) else frames

        return self._command("pull", (names, targets), block, transform,
                             isinstance(targets, int))

    def zip_pull(self, keys: Sequence[str], targets: Any = "all",
                 block: bool = True) -> Deferred[Any]:
        """Pull several names; fire with one tuple per name, its values in target order."""
        if isinstance(keys, str):
            return defer.fail(TypeError("zip_pull() takes a list of names"))

        def zipped(values: Any) -> list[tuple[Any, ...]]:
            per_engine = [values] if isinstance(targets, int) else values
            return list(zip(*per_engine, strict=True))

        return _then(self.pull(keys, targets=targets, block=block), block, zipped)

    def run(self, filename: Any, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Run a local Python file's code on targets (read here, executed there)."""
        try:
            with open(filename, encoding="utf-8") as f:
                code = f.read()
        except Exception as e:
            return defer.fail(e)
        return self.execute(code, targets=targets, block=block)

    def clear_pending_results(self) -> Deferred[int]:
        """Drop this client's unfetched results on the controller; fire with how many."""
        self._finishers.clear()
        return self._remote("clear_pending_results")

    flush = clear_pending_results

    def apply_keeping_stdout(self, func: Callable[..., Any], *args: Any, targets: Any = "all",
                             block: bool = False, **kwargs: Any) -> Deferred[Any]:
        """apply() whose pending result keeps what each call printed (its .stdout)."""
        d = self.apply(call_with_stdout, func, *args, targets=targets, block=block, **kwargs)
        single = isinstance(targets, int)
        if block:
            return d.addCallback(lambda r: r[0] if single else [v for v, _ in r])
        return d.addCallback(lambda pending: _StdoutPending(pending, single))

    def map_keeping_stdout(self, func: Callable[..., Any], *seqs: Sequence[Any],
                           targets: Any = "all", block: bool = False) -> Deferred[Any]:
        """map() whose pending result keeps what each engine printed (its .stdout)."""
        return self._map(func, seqs, targets, block, keep_stdout=True)

    def mapper(self, dist: str = "b", targets: Any = "all", block: bool = True) -> Any:
        """Return a Mapper: m.map(f, xs) fires with the results (see client.parallel)."""
        return Mapper(self, dist, targets, block)

    def raw_map(self, func: Callable[..., Any], seqs: Sequence[Sequence[Any]],
                dist: str = "b", targets: Any = None, block: Any = None) -> Deferred[Any]:
        """raw_map(f, [xs, ys]) is map(f, xs, ys)."""
        return _raw_map(self, func, seqs, dist, targets, block)  # type: ignore[no-any-return]

    def parallel(self, dist: str = "b", targets: Any = "all", block: bool = True) -> Any:
        """Return a decorator: @mec.parallel() def f(x): ...; f(xs) fires with the map."""
        return Parallel(self.mapper(dist, targets, block))

    def get_properties(self, keys: Sequence[str] | None = None, targets: Any = "all",
                       block: bool = True) -> Deferred[Any]:
        """Fire with each target's properties: a dict of the named ones, or of all."""
        names = None if keys is None else [keys] if isinstance(keys, str) else list(keys)
        return self._command("get_properties", (names, targets), block, _identity,
                             isinstance(targets, int))

    def set_properties(self, properties: dict[str, Any], targets: Any = "all",
                       block: bool = True) -> Deferred[Any]:
        """Set properties (plain data) of targets; see properties.py."""
        try:
            check_plain(properties)
            if not isinstance(properties, dict):
                raise TypeError("set_properties() takes a dict")
        except Exception as e:
            return defer.fail(e)
        return self._command("update_properties", ("set", properties, targets), block,
                             _none, True)

    def del_properties(self, keys: Sequence[str], targets: Any = "all",
                       block: bool = True) -> Deferred[Any]:
        """Remove the named properties of targets."""
        names = [keys] if isinstance(keys, str) else list(keys)
        return self._command("update_properties", ("del", names, targets), block, _none, True)

    def has_properties(self, keys: Sequence[str], targets: Any = "all",
                       block: bool = True) -> Deferred[Any]:
        """Fire with, per target, a list of booleans: is each name set there?"""
        names = [keys] if isinstance(keys, str) else list(keys)
        return self._command("get_properties", (None, targets), block,
                             lambda props: [n in props for n in names],
                             isinstance(targets, int))

    def clear_properties(self, targets: Any = "all", block: bool = True) -> Deferred[Any]:
        """Remove every property of targets."""
        return self._command("update_properties", ("clear", None, targets), block, _none, True)

    def _ids(self, targets: Any) -> Deferred[list[int]]:
        """Resolve targets to engine ids (asking the controller for 'all')."""
        if isinstance(targets, int) and not isinstance(targets, bool):
            return defer.succeed([targets])
        if isinstance(targets, (list, tuple)):
            return defer.succeed(list(targets))
        d = self.get_ids()

        def check(ids: list[int]) -> list[int]:
            if not ids:
                raise NoEnginesRegistered("no engines are registered with the controller")
            return ids

        return d.addCallback(check)

    # -- collaboration (issue 8) --

    def whoami(self) -> Deferred[dict[str, Any]]:
        """Fire with {"user", "kind", "client"}: whom this client acts as."""
        return self._remote("whoami")

    def users(self) -> Deferred[list[dict[str, Any]]]:
        """Fire with the users: name, kind, connected sessions, queued commands."""
        return self._remote("users").addCallback(_check_global_error)

    def say(self, text: str) -> Deferred[None]:
        """Send a chat line to everyone subscribed."""
        return self._remote("say", str(text)).addCallback(_check_global_error)

    def subscribe_events(self, observer: Callable[[dict[str, Any]], Any],
                         history: int = 200) -> Deferred[None]:
        """Call observer(event) for each event: recent history first, then live.

        Fires with {"seq": n}: events numbered up to n are history.
        (``subscribe`` is the live stdout/stderr of commands only; see streaming.)
        """
        self._event_observer = EventObserver(observer)
        d = self._remote("subscribe_events", self._event_observer, history)
        return d.addCallback(_check_global_error)

    def unsubscribe_events(self) -> Deferred[None]:
        """Stop the events."""
        self._event_observer = None
        return self._remote("unsubscribe_events")

    def transcript(self, user: str | None = None, last: int = 1000) -> Deferred[Any]:
        """Fire with the last events of the controller's transcript."""
        return self._remote("transcript", user, last).addCallback(_check_global_error)

    def connect_tasks(self) -> Deferred[Any]:
        """Fire with an AsyncTaskClient for the task farm, acting as this client's user."""
        if self._lost is not None:
            return defer.fail(ConnectionLost(self._lost))
        d = _connect_tasks(self._session)
        d.addCallback(_task_client, None, self.furl, self._session)
        return d.addCallback(self._reconnects_with_me)

    def _reconnects_with_me(self, tasks: Any) -> Any:
        """Have a task client opened through this session reopen through it (issue 15)."""
        if self.reconnector is not None:
            tasks.reconnector = Reconnector(self._reopen_tasks, tasks._reconnected,
                                            "the task client", self.reconnector.timeout)
        return tasks

    @defer.inlineCallbacks
    def _reopen_tasks(self, seconds: float) -> Any:
        """Open a task farm session again, through this client's reopened session."""
        if self._lost is not None and self.reconnector is not None:
            yield self.reconnector.ensure()
        session = yield _connect_tasks(self._session)
        channel = yield _open_command_channel(session)
        return None, session, channel, self._session

    def disconnect(self) -> None:
        """Drop the connection to the controller."""
        if self._channel is not None and self._channel.transport is not None:
            self._channel.transport.loseConnection()
        if self._tub is not None:
            self._tub.stopService()
            self._tub = None


def _wire_frames(namespace: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Keep large values' frames for the data channel; make small ones bytes."""
    return {key: frames if refs.is_large(frames) else [bytes(f) for f in frames]
            for key, frames in namespace.items()}


def _is_frames(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(f, (bytes, bytearray)) for f in value)


def _check_namespace(namespace: Any) -> dict[str, Any]:
    if not isinstance(namespace, dict) or not all(isinstance(k, str) for k in namespace):
        raise TypeError("push() takes a dict with str keys")
    bad = [k for k in namespace if not k.isidentifier()]
    if bad:
        raise ValueError(f"cannot push {bad[0]!r}: not a valid Python name")
    return namespace


def _check_global_error(replies: Any) -> Any:
    if isinstance(replies, dict) and replies.get("status") == "error":
        raise error_from_wire(replies["error"])
    return replies


def _finish_replies(replies: Any, transform: Callable[[Any], Any], single: bool) -> Any:
    """Turn engine replies into results, or raise the engines' errors."""
    replies = _check_global_error(replies)
    results: list[Any] = []
    errors: list[KernelError] = []
    for reply in replies:
        if reply.get("status") == "ok":
            value = reply.get("value")
            if isinstance(value, dict) and "execution_count" in value and \
                    "engine_id" not in value:
                value["engine_id"] = reply.get("engine_id")  # slimmed execution record
            results.append(transform(value))
        else:
            errors.append(error_from_wire(reply["error"]))
    if errors:
        if len(replies) == 1:
            raise errors[0]
        raise CompositeError("command failed on some engines", errors, results)
    if single:
        return results[0] if results else None
    if results and isinstance(results[0], ExecuteResult):
        return ResultList(results)
    return results


class DebuggerObserver(Referenceable):  # type: ignore[misc]
    """Where the controller hands this client an engine's waiting pdb prompt."""

    client: AsyncMultiEngineClient | None = None

    def remote_debugger_waiting(self, engine_id: int, text: str) -> None:
        if self.client is not None:
            self.client.debugger_waiting(engine_id, text)


def client_info() -> dict[str, Any]:
    """Describe this client process for the controller's logs."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return {"name": user, "host": socket.gethostname(), "pid": os.getpid(),
            "versions": local_versions()}


@defer.inlineCallbacks
def _open_command_channel(session: Any) -> Any:
    """Reach the session over the controller's local socket if it is on this host,
    else over its TLS port (transport.tcpchannel)."""
    if not command_channel.enabled():
        return None
    host = command_channel.host_key()  # "" matches no controller: the TLS port then
    try:
        offer = yield foolscap_transport.call(session, "open_command_channel", host)
    except Exception:
        return None  # a controller without it: Foolscap only
    channel = yield tcpchannel.connect_session(offer, session)
    return channel


@defer.inlineCallbacks
def _task_client(session: Any, tub: Any, furl: str, parent: Any) -> Any:
    """Make an AsyncTaskClient, over the local command channel if it can be opened."""
    channel = yield _open_command_channel(session)
    return AsyncTaskClient(session, tub, furl, parent, channel)


def _connect_tasks(session: Any) -> Deferred[Any]:
    """Ask a multi-engine session for a task farm session acting as its user."""
    d = foolscap_transport.call(session, "connect_tasks", client_info())

    def unwrap(answer: Any) -> Any:
        if isinstance(answer, dict) and answer.get("status") == "ok":
            return answer["value"]
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            raise error_from_wire(answer["error"])
        raise KernelError(f"unexpected answer to connect_tasks: {answer!r:.200}")

    return d.addCallback(unwrap)


# What this module held before the async client was split (its old name is
# ipython1.kernel.asyncclient: get_multiengine_client and get_task_client, IPython 0.10's).
_MOVED_OUT = {"get_multiengine_client": "connect", "get_task_client": "connect",
              "warn_about_engine_versions": "connect", "_open_session": "connect",
              "_reopen": "connect", "_check_client_furl": "connect"}


def __getattr__(name: str) -> Any:
    """Re-export the connecting functions, imported only when asked for (they import this)."""
    if name in _MOVED_OUT:
        return getattr(importlib.import_module(f"ipython1.client.{_MOVED_OUT[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

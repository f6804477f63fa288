"""AsyncTaskClient: the task farm's client, every method a Deferred.

It submits tasks (`taskspec`: ``StringTask``, ``MapTask``) and collects
their ``TaskResult``s; opened by `connect.get_task_client`, wrapped for
blocking use by ``client.TaskClient`` (`taskfarm`).

Submitting does not wait for the controller: the client reserves blocks of
task ids and sends the tasks of one reactor turn in one message, so ``run``
costs about a thread hop and ordering with later calls is kept by the
connection (Foolscap delivers one connection's messages in order).

On the controller's host the calls take the local command channel instead
(see `ipython1.transport.channel`), as the multi-engine client's do; a call whose
arguments msgpack cannot hold takes Foolscap, and `ChannelSessionConnection`
keeps the order across the switch. Answers are the same plain data either
way (results come as one msgpack byte string, ``get_results_packed``: plain
data, with each value the engine's frames, deserialized here).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ipython1.client.parallel import Parallel, TaskMapper
from ipython1.client.reconnect import IN_FLIGHT_HINT, channel_closed
from ipython1.client.taskspec import (
    MapTask,
    StringTask,
    TaskResult,
    _BaseTask,
    join_map_results,
    map_specs,
)
from ipython1.common import replies, wire
from ipython1.common.errors import ConnectionLost, KernelError, error_from_wire
from ipython1.transport import channel as command_channel

__all__ = ["AsyncTaskClient", "MapTask", "StringTask", "TaskResult"]

RESERVE_MAX = 4096  # task ids reserved per round trip, at most
SUBMIT_CHUNK = 1000  # tasks per submit message


def _connection_lost(failure: Any) -> bool:
    """Tell whether a call failed because the connection to the controller went."""
    from foolscap.api import DeadReferenceError
    from twisted.internet.error import ConnectionDone
    from twisted.internet.error import ConnectionLost as TwistedLost

    return bool(failure.check(DeadReferenceError, ConnectionDone, TwistedLost, ConnectionLost))


def _unwrap(answer: Any) -> Any:
    if isinstance(answer, dict) and answer.get("status") == "ok":
        return answer.get("value")
    if isinstance(answer, dict) and answer.get("status") == "error":
        raise error_from_wire(answer["error"])
    raise KernelError(f"unexpected answer from the task farm: {answer!r:.200}")


def _as_result(record: Any) -> TaskResult | None:
    return None if record is None else TaskResult(record)


class AsyncTaskClient:
    """The task farm over Foolscap (or the local command channel); methods return Deferreds."""

    def __init__(self, session: Any, tub: Any = None, furl: str = "",
                 parent: Any = None, channel: Any = None) -> None:
        from twisted.internet import reactor

        self._session = session
        self._channel = channel  # transport.channel.ClientEnd: this session over a local socket
        self._calls = command_channel.session_connection(session, channel)
        self._parent = parent  # the user's multi-engine session it came from, if any
        self._tub = tub
        self.furl = furl
        self._reactor = reactor
        self._lost: str | None = None
        self._next_tid = 0
        self._end_tid = 0
        self._reserve_size = 64
        self._reserve_waiters: list[Deferred[None]] = []
        self._outbox: list[list[Any]] = []
        self._flush_scheduled = False
        self._submitting = 0
        self._lock = threading.Lock()
        self.rejected: dict[int, KernelError] = {}
        # Set by get_task_client: reopens the session once the controller is back.
        self.reconnector: Any = None
        self._calls.notifyOnDisconnect(self._disconnected)

    def _disconnected(self, *args: Any) -> None:
        self._lost = (f"the connection to the task farm at {wire.furl_location(self.furl)} "
                      "was lost")

    def _reconnected(self, opened: tuple[Any, Any, Any]) -> None:
        """Take the session reopened after a restart; reserved ids stay valid (journal)."""
        if self._tub is not None:
            self._tub.stopService()
        self._tub, self._session, self._channel, *parent = opened
        if parent:  # opened through a user's multi-engine session (its FURL, or mec's)
            self._parent = parent[0]
        self._calls = command_channel.session_connection(self._session, self._channel)
        self._lost = None
        self._calls.notifyOnDisconnect(self._disconnected)

    def _come_back(self) -> Deferred[None] | None:
        """Wait for the controller to come back, if this client can (issue 15)."""
        if self._lost is None and channel_closed(self._channel):
            self._disconnected()  # the controller is gone; Foolscap may not know yet
        if self._lost is None or self.reconnector is None:
            return None
        return self.reconnector.ensure()

    @property
    def local_channel(self) -> bool:
        """Tell whether calls take the controller's local command channel."""
        return self._calls.local

    def _remote(self, method: str, *args: Any) -> Deferred[Any]:
        back = self._come_back()
        if back is not None:
            return back.addCallback(lambda _: self._remote(method, *args))
        self._flush()
        if self._lost is not None:
            return defer.fail(ConnectionLost(self._lost))
        d = self._calls.call(method, args)
        d.addErrback(self._translate, method)
        return d.addCallback(_unwrap)

    def _translate(self, failure: Any, method: str = "") -> Any:
        from foolscap.api import Violation

        if failure.check(KernelError):
            return failure
        if failure.check(Violation):  # as the channel's schema check words it
            raise KernelError(f"bad arguments to {method}: {failure.value}")

        raise ConnectionLost((self._lost or f"the task farm went away: "
                              f"{failure.getErrorMessage()}") + "; " + IN_FLIGHT_HINT)

    # -- submitting --

    def _reserve(self) -> Deferred[None]:
        """Fire once at least one reserved id is free."""
        if self._next_tid < self._end_tid:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._reserve_waiters.append(waiter)
        if len(self._reserve_waiters) == 1:
            n = self._reserve_size
            self._reserve_size = min(self._reserve_size * 2, RESERVE_MAX)

            def got(first: Any) -> None:
                if isinstance(first, int):
                    self._next_tid, self._end_tid = first, first + n
                waiters, self._reserve_waiters = self._reserve_waiters, []
                for w in waiters:
                    if isinstance(first, int):
                        w.callback(None)
                    else:
                        w.errback(first)

            self._remote("reserve", n).addBoth(got)
        return waiter.addCallback(lambda _: self._reserve())

    def try_queue(self, spec: tuple[dict[str, Any], list[bytes]]) -> int | None:
        """Queue a task if a reserved id is free; return its id, or None.

        Safe to call from any thread: the blocking client queues tasks from
        the user's thread without waiting for the reactor.
        """
        if self._lost is not None and (self.reconnector is None or self.reconnector.refused):
            raise ConnectionLost(self._lost)  # else run() would hand out ids never sent
        with self._lock:
            if self._next_tid >= self._end_tid:
                return None
            tid = self._next_tid
            self._next_tid += 1
            self._outbox.append([tid, *spec])
            # Like Nagle: while a submit is in flight, gather tasks for the next one.
            wake = not self._flush_scheduled and not self._submitting
            if wake:
                self._flush_scheduled = True
        if wake:
            self._reactor.callFromThread(self._flush)
        return tid

    def run_spec(self, spec: tuple[dict[str, Any], list[bytes]]) -> Deferred[int]:
        """Queue a task given as (meta, payload); fire with its id (usually at once)."""
        tid = self.try_queue(spec)
        if tid is not None:
            return defer.succeed(tid)
        return self._reserve().addCallback(lambda _: self.run_spec(spec))

    def run_specs(self, specs: list[tuple[dict[str, Any], list[bytes]]]) -> Deferred[list[int]]:
        """Queue several tasks given as (meta, payload); fire with their ids."""
        ids: list[int] = []

        @defer.inlineCallbacks
        def go() -> Any:
            for spec in specs:
                tid = self.try_queue(spec)
                if tid is None:
                    self._reserve_size = max(self._reserve_size,
                                             min(RESERVE_MAX, len(specs) - len(ids)))
                    yield self._reserve()
                    tid = self.try_queue(spec)
                    assert tid is not None
                ids.append(tid)
            return ids

        return go()

    def run(self, task: _BaseTask) -> Deferred[int]:
        """Queue a StringTask or MapTask; fire with its id."""
        if not isinstance(task, _BaseTask):
            return defer.fail(TypeError(f"run() takes a StringTask or a MapTask, "
                                        f"not {type(task).__name__}"))
        try:
            spec = task.to_wire()
        except Exception as e:
            return defer.fail(e)
        return self.run_spec(spec)

    def _flush(self) -> None:
        """Send the queued tasks in one message (before any other call)."""
        with self._lock:
            self._flush_scheduled = False
            if not self._outbox or self._lost is not None:
                back = self._come_back() if self._outbox else None
                if back is not None:  # send them once the controller is back
                    back.addCallbacks(lambda _: self._flush(), lambda f: None)
                return
            outbox, self._outbox = self._outbox, []
            self._submitting += 1
        # Several moderate messages: Foolscap decodes huge ones slowly.
        for start in range(0, len(outbox), SUBMIT_CHUNK):
            self._send(outbox[start:start + SUBMIT_CHUNK], last=start + SUBMIT_CHUNK
                       >= len(outbox))

    def _send(self, tasks: list[list[Any]], last: bool) -> None:
        d = self._calls.call("submit", (tasks,))

        def answered(answer: Any) -> None:
            for item, error in zip(tasks, _unwrap(answer), strict=True):
                if error:
                    self.rejected[item[0]] = error_from_wire(error)

        def next_batch(_: Any) -> None:
            with self._lock:
                self._submitting -= 1
                again = bool(self._outbox) and not self._submitting
            if again:
                self._flush()

        def lost(failure: Any) -> None:
            # The controller went away with the answer: send these again once it
            # is back (it keeps what it had journaled, and takes repeats once).
            if self.reconnector is not None and _connection_lost(failure):
                with self._lock:
                    self._outbox[:0] = tasks
                if self._lost is None:
                    self._disconnected()

        d.addCallbacks(answered, lost)
        d.addErrback(lambda f: None)  # anything else shows up on the next call
        if last:
            d.addBoth(next_batch)

    # -- results --

    def get_task_result(self, tid: int, block: bool = False) -> Deferred[TaskResult | None]:
        """Fire with the task's TaskResult, or None if it is not finished (unless block)."""
        d = self._remote("get_results_packed", [tid], block)
        return d.addCallback(lambda blob: _as_result(replies.loads(blob)[0]))

    def get_task_results(self, tids: list[int], block: bool = False) -> Deferred[Any]:
        """Fire with a TaskResult (or None) per task id."""
        d = self._remote("get_results_packed", list(tids), block)
        return d.addCallback(lambda blob: [_as_result(r) for r in replies.loads(blob)])

    def wait(self, tids: list[int], all_: bool = False,
             timeout: float | None = None) -> Deferred[list[int]]:
        """Fire with the finished ids once any (or all) finished, or after timeout s."""
        return self._remote("wait", list(tids), all_, timeout)

    def barrier(self, tids: list[int]) -> Deferred[None]:
        """Fire when every task of tids has finished."""
        return self.wait(tids, True, None).addCallback(lambda _: None)

    def abort(self, tid: int) -> Deferred[None]:
        """Cancel a queued task; it fails with TaskAborted."""
        return self._remote("abort", tid)

    def queue_status(self, verbose: bool = False) -> Deferred[dict[str, Any]]:
        """Fire with counts of pending, running (per engine), succeeded, failed tasks.

        "scheduled" is IPython 0.10's name for the waiting ones (ids with verbose).
        """
        d = self._remote("queue_status", verbose)
        return d.addCallback(lambda status: dict(
            status, scheduled=status.get("pending_ids" if verbose else "pending")))

    def clear(self, tids: list[int] | None = None) -> Deferred[int]:
        """Drop finished results (these, or all of this client's) from the controller."""
        return self._remote("clear", None if tids is None else list(tids))

    def spin(self) -> Deferred[None]:
        """Make the controller hand ready tasks to idle engines now."""
        return self._remote("spin")

    @defer.inlineCallbacks
    def map(self, func: Callable[..., Any], *seqs: Sequence[Any],
            chunksize: int | None = None, **options: Any) -> Any:
        """Apply func to the elements of seqs on any engines; results in order."""
        status = yield self.queue_status()
        specs, sizes = map_specs(func, seqs, chunksize, len(status["engines"]), options)
        tids = yield self.run_specs(specs)
        yield self.barrier(tids)
        records = yield self.get_task_results(tids)
        yield self.clear(tids)
        return join_map_results(records)

    def mapper(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
               recovery_task: Any = None, depend: Any = None, **options: Any) -> Any:
        """Return a TaskMapper: m.map(f, xs) fires with the results (IPython 0.10)."""
        return TaskMapper(self, clear_before, clear_after, retries, recovery_task, depend,
                          **options)

    def parallel(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
                 recovery_task: Any = None, depend: Any = None, **options: Any) -> Any:
        """Return a decorator: @tc.parallel() def f(x): ...; f(xs) fires with the map."""
        return Parallel(self.mapper(clear_before, clear_after, retries, recovery_task, depend,
                                    **options))

    def disconnect(self) -> None:
        """Drop the connection to the controller."""
        self._flush()
        if self._channel is not None and self._channel.transport is not None:
            channel, self._channel = self._channel, None
            self._reactor.callLater(0.05, channel.transport.loseConnection)
        if self._tub is not None:
            tub, self._tub = self._tub, None
            self._reactor.callLater(0.05, tub.stopService)

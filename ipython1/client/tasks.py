"""Task farm clients' side: task descriptions, results, the async client, progress.

``StringTask`` and ``MapTask`` serialize their values here, on the client;
the controller only stores and relays the frames. ``AsyncTaskClient``
returns Deferreds (see ``asyncclient.get_task_client``); ``client.TaskClient``
wraps it for blocking use.

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

import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ipython1.common import replies
from ipython1.common.errors import ConnectionLost, KernelError, error_from_wire
from ipython1.common.properties import takes_properties
from ipython1.common.serialize import deserialize, serialize
from ipython1.transport import channel as command_channel

__all__ = ["AsyncTaskClient", "MapTask", "StringTask", "TaskResult"]

RESERVE_MAX = 4096  # task ids reserved per round trip, at most
SUBMIT_CHUNK = 1000  # tasks per submit message


class _BaseTask:
    """Options common to every task."""

    kind = ""

    def __init__(self, clear_before: bool = False, clear_after: bool = False,
                 retries: int = 0, recovery_task: _BaseTask | None = None,
                 depend: Any = None, timeout: float | None = None, priority: int = 0,
                 after: Iterable[int] | None = None, idempotent: bool = True) -> None:
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if recovery_task is not None and not isinstance(recovery_task, _BaseTask):
            raise TypeError("recovery_task must be a StringTask or a MapTask")
        if timeout is not None and (isinstance(timeout, bool) or
                                    not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, not {priority!r}")
        if depend is not None and not callable(depend) and not (
                isinstance(depend, tuple) and depend and callable(depend[0])):
            raise TypeError("depend must be a callable, or a tuple (callable, *args)")
        after_ids = [] if after is None else [after] if isinstance(after, int) else list(after)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in after_ids):
            raise TypeError(f"after must be a list of task ids, not {after!r}")
        self.clear_before = bool(clear_before)
        self.clear_after = bool(clear_after)
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend
        self.timeout = timeout
        self.priority = priority
        self.after = after_ids
        # False: never run twice; when its outcome is unknown (its engine died, or a
        # controller restart lost its result) it fails instead of running again.
        self.idempotent = bool(idempotent)

    def _meta(self) -> dict[str, Any]:
        """Return the scheduling fields the controller reads (defaults left out)."""
        meta: dict[str, Any] = {}
        if self.retries:
            meta["retries"] = self.retries
        if self.priority:
            meta["priority"] = self.priority
        if self.timeout is not None:
            meta["timeout"] = float(self.timeout)
        if self.after:
            meta["after"] = list(self.after)
        if not self.idempotent:
            meta["idempotent"] = False
        if self.recovery_task is not None:
            meta["recovery"] = list(self.recovery_task.to_wire())
        if takes_properties(self.depend):
            meta["depend"] = serialize(self.depend)  # f(properties), run by the controller
        return meta

    def _body(self) -> dict[str, Any]:
        """Return what the engine needs besides the task's own fields."""
        body: dict[str, Any] = {"kind": self.kind}
        if self.clear_before:
            body["clear_before"] = True
        if self.clear_after:
            body["clear_after"] = True
        if self.depend is not None and not takes_properties(self.depend):
            f, *args = self.depend if isinstance(self.depend, tuple) else (self.depend,)
            body["depend"] = (f, tuple(args))
        return body

    def to_wire(self) -> tuple[dict[str, Any], list[bytes]]:
        """Return (meta, payload): scheduling fields and the engine's frames."""
        raise NotImplementedError


class StringTask(_BaseTask):
    """Run code on some engine after pushing names; pull names afterwards."""

    kind = "string"

    def __init__(self, code: str, push: dict[str, Any] | None = None,
                 pull: str | Sequence[str] | None = None, **options: Any) -> None:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        if push is not None and (not isinstance(push, dict) or
                                 not all(isinstance(k, str) and k.isidentifier() for k in push)):
            raise TypeError("push must be a dict whose keys are valid Python names")
        names = [] if pull is None else [pull] if isinstance(pull, str) else list(pull)
        if not all(isinstance(k, str) for k in names):
            raise TypeError(f"pull must be a name or a list of names, not {pull!r}")
        super().__init__(**options)
        self.code = code
        self.push = dict(push or {})
        self.pull = names

    def to_wire(self) -> tuple[dict[str, Any], list[bytes]]:
        body = self._body()
        body["code"] = self.code
        if self.push:
            body["push"] = self.push
        if self.pull:
            body["pull"] = list(self.pull)
        return self._meta(), serialize(body)

    def __repr__(self) -> str:
        return f"StringTask({self.code[:60]!r}, pull={self.pull!r})"


class MapTask(_BaseTask):
    """Call func(*args, **kwargs) on some engine; the return value is the result."""

    kind = "map"

    def __init__(self, func: Callable[..., Any], args: Sequence[Any] = (),
                 kwargs: dict[str, Any] | None = None, **options: Any) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        super().__init__(**options)
        self.func = func
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def to_wire(self) -> tuple[dict[str, Any], list[bytes]]:
        body = self._body()
        body.update(func=self.func, args=self.args, kwargs=self.kwargs)
        return self._meta(), serialize(body)

    def __repr__(self) -> str:
        return f"MapTask({getattr(self.func, '__name__', self.func)!r}, args={self.args!r:.60})"


class _Namespace(dict):  # type: ignore[type-arg]
    """The pulled names of a string task: res.ns.b or res.ns['b']."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the task did not pull {name!r}") from None


class TaskResult:
    """What a task did: its value or failure, engine, duration and output."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.tid: int | None = record.get("tid")
        self.status: str = record.get("status", "")
        self.engine_id: int | None = record.get("engine_id")
        self.duration: float | None = record.get("duration")
        self.stdout: str = record.get("stdout", "") or ""
        self.stderr: str = record.get("stderr", "") or ""
        self.attempts: int = record.get("attempts", 0)
        self.recovered: bool = bool(record.get("recovered"))
        self.submitted = record.get("submitted")
        self.started = record.get("started")
        self.completed = record.get("completed")
        error = record.get("error")
        self.failure: KernelError | None = error_from_wire(error) if error else None
        self._value: Any = None
        self._decoded = False
        if self.failure is None:
            self._decode()  # stdout and stderr travel with the value

    @property
    def succeeded(self) -> bool:
        return self.failure is None

    def raise_exception(self) -> None:
        """Raise the task's error, if it failed."""
        if self.failure is not None:
            raise self.failure

    raiseException = raise_exception  # IPython 0.10's docs' spelling

    @property
    def result(self) -> Any:
        """Return a MapTask's value or a StringTask's pulled names; raise if it failed."""
        self.raise_exception()
        self._decode()
        return self._value

    def _decode(self) -> None:
        if self._decoded or self.record.get("value") is None:
            return
        kind, value, self.stdout, self.stderr = deserialize(self.record["value"])
        self._value = _Namespace(value) if kind == "string" else value
        self._decoded = True

    @property
    def ns(self) -> _Namespace:
        """Return the pulled names of a StringTask (res.ns.b)."""
        value = self.result
        if not isinstance(value, _Namespace):
            raise AttributeError("ns is for StringTask results; use .result")
        return value

    def __getitem__(self, name: str) -> Any:
        return self.ns[name]

    # IPython 0.10's names for the same things.
    @property
    def taskid(self) -> int | None:
        return self.tid

    @property
    def engineid(self) -> int | None:
        return self.engine_id

    @property
    def results(self) -> dict[str, Any]:
        """A StringTask's pulled names as a dict ({} if it failed)."""
        return {} if self.failure is not None else dict(self.ns)

    @property
    def keys(self) -> list[str]:
        """The names a StringTask pulled ([] if it failed)."""
        return list(self.results)

    def __repr__(self) -> str:
        if self.failure is not None:
            what = f"failed: {self.failure!r}"
        else:
            what = "ok"
        return (f"<TaskResult tid={self.tid} engine={self.engine_id} {what} "
                f"duration={self.duration if self.duration is None else round(self.duration, 6)}>")


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
        from ipython1.common import wire

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
        from ipython1.client.reconnect import channel_closed

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
        from ipython1.client.reconnect import IN_FLIGHT_HINT

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
        from ipython1.client.parallel import TaskMapper

        return TaskMapper(self, clear_before, clear_after, retries, recovery_task, depend,
                          **options)

    def parallel(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
                 recovery_task: Any = None, depend: Any = None, **options: Any) -> Any:
        """Return a decorator: @tc.parallel() def f(x): ...; f(xs) fires with the map."""
        from ipython1.client.parallel import Parallel

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


# -- map helpers (shared by the blocking client) ------------------------------------


def auto_chunksize(n: int, engines: int) -> int:
    """Pick a chunk size: about 8 chunks per engine, so work balances and failures cost little."""
    return max(1, -(-n // (max(1, engines) * 8)))


def map_specs(func: Callable[..., Any], seqs: Sequence[Sequence[Any]], chunksize: int | None,
              engines: int, options: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """Cut seqs into chunks and build one MapTask spec per chunk."""
    from ipython1.common.scatter import map_chunk as _map_chunk

    if not seqs:
        raise TypeError("map() needs at least one sequence")
    if not callable(func):
        raise TypeError(f"map() needs a callable, not {type(func).__name__}")
    lists = [list(s) for s in seqs]
    n = min(len(s) for s in lists)
    if chunksize is None:
        chunksize = auto_chunksize(n, engines)
    if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
        raise ValueError(f"chunksize must be a positive int, not {chunksize!r}")
    func_frames = serialize(func)  # once for the whole map
    meta = MapTask(_map_chunk, **options)
    specs, sizes = [], []
    for start in range(0, n, chunksize):
        chunks = [s[start:start + chunksize] for s in lists]
        body = meta._body()
        body.update(func=_map_chunk, args=(_Frames(func_frames), *chunks), kwargs={})
        specs.append((meta._meta(), serialize(body)))
        sizes.append(len(chunks[0]))
    return specs, sizes


class _Frames:
    """A function already serialized once for a whole map (rebuilt on the engine)."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    def __reduce__(self) -> Any:
        return (deserialize, (self.frames,))


def join_map_results(results: list[Any]) -> list[Any]:
    """Concatenate chunk results in order; raise the first failure."""
    out: list[Any] = []
    for res in results:
        if res is None:
            raise KernelError("a map chunk has no result")
        out.extend(res.result)
    return out


# -- progress -----------------------------------------------------------------------


def progress_enabled() -> bool:
    """Tell whether to draw progress bars: a terminal or a notebook, unless disabled."""
    if os.environ.get("IPYTHON1_NONINTERACTIVE") == "1":
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            return True
    except Exception:
        pass
    try:
        return sys.stderr.isatty()
    except Exception:
        return False


def progress_bar(total: int, desc: str, enabled: bool | None = None) -> Any:
    """Return a tqdm bar counting items, or a do-nothing stand-in."""
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        return _NoBar()
    try:
        import ipywidgets  # noqa: F401 - a notebook draws tqdm's widget with it
        from tqdm.auto import tqdm
    except ImportError:  # without it tqdm.auto warns in a notebook; a text bar works there
        from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="task", leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

"""The event stream: everything that happens on a controller, attributed and in order.

One ``EventBus`` per controller. Every happening is published into it once
(user joined/left, command queued/started, stdout/stderr chunks, result,
error, chat, engine registered/died...) as an event::

    {"seq": 17, "time": 1700000000.123, "kind": "queued", "user": "alice",
     "client": "alice/client-3", "engine": None, "data": {"op": "execute", ...}}

Events never carry values (pushed/pulled objects, frames): only code, names,
output text and short reprs. The bus appends each event to the transcript
(``log/transcript.jsonl``, flushed per event) and to a ring of recent events,
and offers it to every subscriber.

A subscriber is a ``Subscription``: its own bounded buffer, at most
``MAX_OUTSTANDING`` delivery calls in flight (events published meanwhile are
batched into the next call), and when its buffer exceeds ``MAX_BUFFERED`` it
is dropped with a logged reason. Deliveries go out every ``FLUSH_DELAY``
(20 ms) at most, gathering what was published meanwhile. Publishing never waits for a subscriber, so
a slow or dead one cannot slow the engines or the other clients.

Each event is JSON-encoded once; a delivery is one byte string holding a
JSON list of events, whatever the number of subscribers.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipython1.common.replies import decode as decode_reply
from ipython1.controller.queue import Command, user_of
from ipython1.transport import foolscap as foolscap_transport

log = Logger()

HISTORY = 1000  # recent events kept in memory for late subscribers
LATE_HISTORY = 200  # events a new subscriber gets first, by default
MAX_BUFFERED = 10_000  # events waiting for one subscriber before it is dropped
MAX_OUTSTANDING = 2  # delivery calls in flight per subscriber
FLUSH_DELAY = 0.02  # s: events are gathered this long into one call per subscriber
MAX_BATCH_BYTES = 1 << 20  # one delivery call carries at most about this much
MAX_TEXT = 64 * 1024  # characters of output text per event; longer chunks are split
MAX_CODE = 64 * 1024  # characters of code kept in a "queued" event
MAX_REPR = 500  # characters of an Out[n] repr kept in a "result" event

Event = dict[str, Any]


# One encoder for every event: json.dumps with options builds a new one per call,
# and a broadcast to N engines publishes 2N events.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def encode(event: Event) -> bytes:
    return _ENCODER.encode(event).encode()


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def describe_command(op: str, args: tuple[Any, ...], description: str) -> dict[str, Any]:
    """Describe a command for its "queued" event: code or names, never values."""
    if op == "execute" and args and isinstance(args[0], str):
        return {"op": op, "code": _clip(args[0], MAX_CODE)}
    if op == "push" and args and isinstance(args[0], dict):
        return {"op": op, "names": sorted(args[0])}
    if op == "pull" and args and isinstance(args[0], list):
        return {"op": op, "names": [str(k) for k in args[0]]}
    return {"op": op, "description": description[:200]}


class Transcript:
    """The controller's append-only log of events, one JSON line each."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_seq, self.recent = _tail(self.path, HISTORY)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                       0o600)

    def append(self, line: bytes) -> None:
        self.extend([line])

    def extend(self, lines: list[bytes]) -> None:
        """Append lines in one write, straight to the kernel (no buffer): nothing
        written is lost if the controller is killed."""
        if self._fd is None:
            raise OSError("the transcript is closed")
        data = memoryview(b"\n".join(lines) + b"\n")
        while data:
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _tail(path: Path, n: int) -> tuple[int, list[Event]]:
    """Return the last seq in a transcript and its last n events."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * 1024 * 1024))
            lines = f.read().splitlines()
    except OSError:
        return 0, []
    events = []
    for line in lines[-n:]:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill, or the first partial line
    last = max((e.get("seq", 0) for e in events if isinstance(e, dict)), default=0)
    return int(last), [e for e in events if isinstance(e, dict)]


def read_transcript(path: Path, user: str | None = None) -> Iterator[Event]:
    """Yield the events of a transcript file (optionally one user's)."""
    with open(path, "rb") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if user is None or event.get("user") == user:
                yield event


class Subscription:
    """One subscriber: a bounded buffer and a limit on calls in flight."""

    def __init__(self, bus: EventBus, deliver: Callable[[bytes], Any], name: str) -> None:
        self.bus = bus
        self.name = name
        self._deliver = deliver
        self.buffer: collections.deque[bytes] = collections.deque()
        self.outstanding = 0
        self.delivered = 0
        self.closed = False

    def offer(self, line: bytes) -> bool:
        """Buffer one encoded event; return False if that overflowed the bound."""
        self.buffer.append(line)
        return len(self.buffer) <= self.bus.max_buffered

    def pump(self) -> None:
        """Send buffered events while fewer than MAX_OUTSTANDING calls are in flight."""
        while not self.closed and self.buffer and self.outstanding < self.bus.max_outstanding:
            lines: list[bytes] = []
            size = 0
            while self.buffer and (not lines or size + len(self.buffer[0]) < MAX_BATCH_BYTES):
                line = self.buffer.popleft()
                lines.append(line)
                size += len(line) + 1
            blob = b"[" + b",".join(lines) + b"]"
            self.outstanding += 1
            try:
                d = defer.maybeDeferred(self._deliver, blob)
            except Exception:
                d = defer.fail(Failure())
            d.addCallbacks(self._delivered, self._failed, callbackArgs=(len(lines),))

    def _delivered(self, _: Any, count: int) -> None:
        self.outstanding -= 1
        self.delivered += count
        self.pump()

    def _failed(self, failure: Failure) -> None:
        self.outstanding -= 1
        self.bus.drop(self, f"delivery failed: {failure.getErrorMessage()}")


class EventBus:
    """Publish events to a transcript, a ring of recent events and subscribers."""

    def __init__(self, transcript: Transcript | None = None, clock: Any = None,
                 max_buffered: int = MAX_BUFFERED,
                 max_outstanding: int = MAX_OUTSTANDING,
                 flush_delay: float = FLUSH_DELAY) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.max_buffered = max_buffered
        self.max_outstanding = max_outstanding
        self.flush_delay = flush_delay
        self.recent: collections.deque[bytes] = collections.deque(maxlen=HISTORY)
        self.subscriptions: list[Subscription] = []
        self.dropped: list[tuple[str, str]] = []  # (subscriber, reason), for tests and logs
        self.transcript: Transcript | None = None
        self._seq = 0
        self._pump_scheduled = False
        self._streamed: set[int] = set()  # commands whose output arrived live
        self.published = 0
        self._held: list[bytes] | None = None  # transcript lines of a fan-out (held_writes)
        if transcript is not None:
            self.set_transcript(transcript)

    def set_transcript(self, transcript: Transcript) -> None:
        """Append to transcript from now on; continue its numbering and history."""
        self.transcript = transcript
        self._seq = max(self._seq, transcript.last_seq)
        for event in transcript.recent:
            self.recent.append(encode(event))

    @property
    def last_seq(self) -> int:
        """The number of the last event published."""
        return self._seq

    # -- publishing --

    def publish(self, kind: str, user: str = "", engine: int | None = None,
                data: dict[str, Any] | None = None, client: str = "") -> Event:
        """Record one event and offer it to every subscriber; never waits."""
        self._seq += 1
        event = {"seq": self._seq, "time": time.time(), "kind": kind, "user": user,
                 "client": client, "engine": engine, "data": data or {}}
        line = encode(event)
        self.published += 1
        self.recent.append(line)
        if self._held is not None:
            self._held.append(line)
        elif self.transcript is not None:
            self._write([line])
        overflowed = [s for s in self.subscriptions if not s.offer(line)]
        for sub in overflowed:
            self.drop(sub, f"more than {self.max_buffered} events waiting "
                           f"({sub.outstanding} deliveries unanswered): too slow or not reading")
        if self.subscriptions and not self._pump_scheduled:
            # Events published within flush_delay go out as one call: with many
            # subscribers, calls per command (not events) are what cost.
            self._pump_scheduled = True
            self.clock.callLater(self.flush_delay, self._pump)
        return event

    def _write(self, lines: list[bytes]) -> None:
        try:
            self.transcript.extend(lines)  # type: ignore[union-attr]
        except OSError as e:
            log.error("cannot append to the transcript: {e}", e=e)

    @contextmanager
    def held_writes(self) -> Iterator[None]:
        """Write the events published inside to the transcript in one write as it ends.

        For a command's fan-out to N engines: its queued and N started events
        cost one write, not N + 1. Nothing is sent before the reactor runs again
        (Twisted only buffers writes), so a controller killed meanwhile has sent
        no command whose events the transcript lacks.
        """
        if self._held is not None or self.transcript is None:
            yield  # nested, or no transcript: nothing to gather
            return
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                self._write(held)

    def _pump(self) -> None:
        self._pump_scheduled = False
        for sub in list(self.subscriptions):
            sub.pump()

    # -- subscribers --

    def subscribe(self, deliver: Callable[[bytes], Any], name: str = "",
                  history: int = LATE_HISTORY) -> Subscription:
        """Add a subscriber; it first gets up to `history` recent events."""
        sub = Subscription(self, deliver, name or f"subscriber-{len(self.subscriptions) + 1}")
        if history > 0:
            for line in list(self.recent)[-history:]:
                sub.offer(line)
        self.subscriptions.append(sub)
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.clock.callLater(0, self._pump)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        sub.buffer.clear()
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)

    def drop(self, sub: Subscription, reason: str) -> None:
        """Remove a subscriber that cannot keep up, saying why in the log."""
        if sub.closed:
            return
        self.unsubscribe(sub)
        self.dropped.append((sub.name, reason))
        log.warn("dropped event subscriber {name}: {reason}", name=sub.name, reason=reason)

    # -- controller notifications --

    def on_controller(self, kind: str, data: dict[str, Any]) -> None:
        """Translate the controller's notifications into events (Controller.add_observer)."""
        engine = data.get("engine_id")
        if kind == "engine_registered":
            info = data.get("info") or {}
            self.publish("engine_registered", engine=engine,
                         data={k: info[k] for k in ("host", "pid", "rejoin") if k in info})
            if info.get("finished_while_away"):  # rejoined (issue 15): records in its history
                self.publish("finished_while_away", engine=engine,
                             data={"commands": info["finished_while_away"]})
            if info.get("restarted"):  # by its supervisor, fresh, after it died (issue 15)
                self.publish("engine_restarted", engine=engine,
                             data={"after": str(info["restarted"]), "pid": info.get("pid")})
        elif kind == "engine_died":
            self.publish("engine_died", engine=engine)
        elif kind == "command_started":
            command: Command = data["command"]
            self.publish("started", command.owner, engine,
                         {"op": command.op, "call": command.call}, command.client)
        elif kind == "command_finished":
            self._finished(engine, data["command"], data.get("reply"))
        elif kind == "output":
            self._output(engine, data)

    def _output(self, engine: int | None, data: dict[str, Any]) -> None:
        """Live stdout/stderr chunks from the streaming of issue 3."""
        client = str(data.get("client") or "")
        command_id = data.get("command_id")
        call = data.get("call", 0)
        if command_id is not None:
            self._streamed.add(command_id)
        for name, text in data.get("chunks", []):
            self._text(name, engine, text, user_of(client), client, call)

    def _text(self, name: str, engine: int | None, text: str, user: str, client: str,
              call: int) -> None:
        for start in range(0, len(text), MAX_TEXT):
            self.publish(name, user, engine, {"text": text[start:start + MAX_TEXT],
                                              "call": call}, client)

    def _finished(self, engine: int | None, command: Command, reply: Any) -> None:
        reply = decode_reply(reply)
        user, client = command.owner, command.client
        base = {"op": command.op, "call": command.call}
        streamed = command.id in self._streamed
        self._streamed.discard(command.id)
        if isinstance(reply, Failure):
            self.publish("error", user, engine, {**base, "ename": type(reply.value).__name__,
                                                  "evalue": str(reply.value)[:1000]}, client)
            return
        if not isinstance(reply, dict):
            self.publish("result", user, engine, base, client)
            return
        if reply.get("status") == "error":
            error = reply.get("error") or {}
            record = error.get("record") or {}
            if not streamed:
                self._record_output(record, engine, user, client, command.call)
            self.publish("error", user, engine, {
                **base, "ename": error.get("ename"), "evalue": str(error.get("evalue"))[:1000],
                "execution_count": error.get("execution_count")}, client)
            return
        value = reply.get("value")
        if command.op == "execute" and isinstance(value, dict):
            if not streamed:
                self._record_output(value, engine, user, client, command.call)
            result = value.get("result") or {}
            text = (result.get("data") or {}).get("text/plain") if isinstance(result, dict) \
                else None
            extra = {"execution_count": value.get("execution_count")}
            if text is not None:
                extra["repr"] = _clip(str(text), MAX_REPR)
            self.publish("result", user, engine, {**base, **extra}, client)
            return
        self.publish("result", user, engine, base, client)

    def _record_output(self, record: dict[str, Any], engine: int | None, user: str,
                       client: str, call: int) -> None:
        """Publish a finished command's output when it did not stream live."""
        for name in ("stdout", "stderr"):
            text = record.get(name)
            if isinstance(text, str) and text:
                self._text(name, engine, text, user, client, call)


def remote_deliverer(observer: Any) -> Callable[[bytes], Deferred[Any]]:
    """Deliver batches to a remote EventObserver."""

    def deliver(blob: bytes) -> Deferred[Any]:
        return foolscap_transport.call(observer, "events", blob)

    return deliver


def __getattr__(name: str) -> Any:
    """Re-export the client half from its own module, imported only when asked for."""
    if name in ("EventObserver", "decode_batch", "format_event", "format_targets"):
        from ipython1.client import events

        return getattr(events, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

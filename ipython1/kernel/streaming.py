"""Live output: stdout/stderr of running commands, from engines to clients.

Three pieces, one per process:

- ``OutputBatcher`` (engine): user code writes on the shell thread; chunks are
  coalesced and sent from the reactor thread at most every ``delay`` seconds,
  so a tight print loop sends a few large messages, not a flood. Everything
  is flushed before a command's reply is sent, so a client sees a command's
  output before its result.
- ``OutputReceiver`` (controller): the Referenceable the controller hands
  each engine; it labels chunks with the engine and the running command and
  passes them to the controller's observers (client sessions subscribe).
- ``StreamPrinter`` (client): prints chunks as ``[stdout:3] line``, one line
  at a time, honouring carriage returns as a terminal would.

Output that arrives faster than it can be sent is capped (``MAX_PENDING``
characters waiting); the excess is replaced by a marker. The full output is
always kept in the command's execution record.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from foolscap.api import Referenceable
from twisted.internet.defer import Deferred, succeed

MAX_PENDING = 4_000_000  # characters waiting to be sent from one engine
FLUSH_DELAY = 0.05  # seconds: output is sent at most this often while a command runs

Chunk = list  # [stream name, text]


class OutputBatcher:
    """Coalesce output written on any thread; send it from the reactor thread."""

    def __init__(self, send: Callable[[list[Chunk]], Any], delay: float = FLUSH_DELAY,
                 call_from_thread: Callable[..., Any] | None = None, clock: Any = None,
                 max_pending: int = MAX_PENDING) -> None:
        if call_from_thread is None or clock is None:
            from twisted.internet import reactor

            call_from_thread = call_from_thread or reactor.callFromThread
            clock = clock or reactor
        self._send = send
        self._delay = delay
        self._call_from_thread = call_from_thread
        self._clock = clock
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._chunks: list[Chunk] = []
        self._pending = 0
        self._dropped = 0
        self._scheduled = False
        self._in_flight: set[Any] = set()  # sends not yet acknowledged (reactor thread)
        self._drain_waiters: list[Deferred[None]] = []

    def write(self, name: str, text: str) -> None:
        """Queue text written to stream name (called on the shell thread)."""
        with self._lock:
            if self._pending + len(text) > self._max_pending:
                self._dropped += len(text)
            else:
                if self._chunks and self._chunks[-1][0] == name:
                    self._chunks[-1][1] += text
                else:
                    self._chunks.append([name, text])
                self._pending += len(text)
            schedule, self._scheduled = not self._scheduled, True
        if schedule:
            self._call_from_thread(self._schedule)

    def _schedule(self) -> None:
        self._clock.callLater(self._delay, self.flush)

    def flush(self) -> Any:
        """Send what is waiting now (reactor thread); return what send returned."""
        with self._lock:
            chunks, self._chunks = self._chunks, []
            dropped, self._dropped = self._dropped, 0
            self._pending = 0
            self._scheduled = False
        if dropped:
            chunks.append(["stderr", f"\n[ipython1: {dropped} characters of live output "
                                     "dropped; the full output is in the result]\n"])
        if not chunks:
            return None
        sent = self._send(chunks)
        if isinstance(sent, Deferred):
            self._in_flight.add(sent)
            sent.addBoth(self._acknowledged, sent)
        return sent

    def _acknowledged(self, result: Any, sent: Deferred[Any]) -> Any:
        self._in_flight.discard(sent)
        if not self._in_flight:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def idle(self) -> bool:
        """Tell whether all output written so far has been sent and acknowledged."""
        return not self._scheduled and not self._in_flight

    def drain(self) -> Deferred[None]:
        """Send what is waiting; fire once every send so far is acknowledged (reactor thread)."""
        self.flush()
        if not self._in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter


class OutputReceiver(Referenceable):  # type: ignore[misc]
    """The controller's end of one engine's output stream."""

    def __init__(self, engine_id: int, deliver: Callable[[int, list[Chunk]], Any],
                 on_debugger: Callable[[int, str], bool] | None = None) -> None:
        self.engine_id = engine_id
        self._deliver = deliver
        self._on_debugger = on_debugger

    def remote_output(self, chunks: list[Chunk]) -> Any:
        clean = [[str(name), str(text)] for name, text in chunks
                 if name in ("stdout", "stderr") and isinstance(text, str)]
        return self._deliver(self.engine_id, clean) if clean else None

    def remote_debugger(self, text: str) -> bool:
        """The engine's pdb waits for a line: hand its prompt to a client; False if none."""
        if self._on_debugger is None or not isinstance(text, str):
            return False
        return self._on_debugger(self.engine_id, text[:1 << 20])


class OutputObserver(Referenceable):  # type: ignore[misc]
    """The client's end of a subscription: calls callback(engine_id, name, text)."""

    def __init__(self, callback: Callable[[int, str, str], None]) -> None:
        self.callback = callback

    def remote_output(self, event: dict[str, Any]) -> None:
        engine_id = event.get("engine_id")
        for name, text in event.get("chunks", []):
            self.callback(engine_id, name, text)


class StreamPrinter:
    """Print live output line by line as ``[stdout:3] text``.

    A line is printed when its newline arrives (or on ``flush``); within a
    line, a carriage return discards what came before it, as a terminal
    shows a progress bar's final state.
    """

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out
        self._partial: dict[tuple[int, str], str] = {}
        self._lock = threading.Lock()

    @property
    def out(self) -> IO[str]:
        return self._out if self._out is not None else sys.stdout

    def __call__(self, engine_id: int, name: str, text: str) -> None:
        with self._lock:
            key = (engine_id, name)
            buffer = self._partial.pop(key, "") + text
            *lines, rest = buffer.split("\n")
            for line in lines:
                self._emit(engine_id, name, line)
            if rest:
                self._partial[key] = rest
            self.out.flush()

    def flush(self) -> None:
        """Print every unfinished line."""
        with self._lock:
            partial, self._partial = self._partial, {}
            for (engine_id, name), rest in sorted(partial.items()):
                self._emit(engine_id, name, rest)
            self.out.flush()

    def _emit(self, engine_id: int, name: str, line: str) -> None:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
        self.out.write(f"[{name}:{engine_id}] {line}\n")

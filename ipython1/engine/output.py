"""Live output: stdout/stderr of running commands, from engines to clients.

Three pieces, one per process:

- ``OutputBatcher`` (engine): user code writes on the shell thread; chunks are
  coalesced and sent from the reactor thread at most every ``delay`` seconds,
  so a tight print loop sends a few large messages, not a flood. Everything
  is flushed before a command's reply is sent, so a client sees a command's
  output before its result.
- ``OutputReceiver`` (controller, in ``ipython1.controller.output``): the
  Referenceable the controller hands each engine; it labels chunks with the
  engine and the running command and passes them to the controller's
  observers (client sessions subscribe).
- ``StreamPrinter`` (client, in ``ipython1.client.output``): prints chunks as
  ``[stdout:3] line``, one line at a time, honouring carriage returns as a
  terminal would.

Output that arrives faster than it can be sent is capped (``MAX_PENDING``
characters waiting); the excess is replaced by a marker. The full output is
always kept in the command's execution record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

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


def __getattr__(name: str) -> Any:
    """Re-export the client half from its own module, imported only when asked for."""
    if name in ("OutputObserver", "StreamPrinter"):
        from ipython1.client import output

        return getattr(output, name)
    if name in ("OutputReceiver",):
        from ipython1.controller import output

        return getattr(output, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

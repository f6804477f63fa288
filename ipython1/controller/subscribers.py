"""One live-output subscriber, bounded: nobody waits on it, and it cannot grow memory.

A session that subscribes to live output (``subscribe_output``) gets a
`BoundedForwarder`. It keeps at most ``max_in_flight`` calls unacknowledged
and a backlog of at most ``max_backlog`` messages; beyond that messages are
dropped and counted, and once the subscriber acknowledges again it first
gets a notice saying how many were lost. A stopped subscriber therefore
costs the controller a bounded amount of memory and no one any time.

Only the client whose own command printed may hold that command's reply
until it has the output (so it sees output before result), and only while
it keeps up: a forwarder with a call unacknowledged for ``stall_after``
seconds is *stalled*, and its own commands stop waiting for it too.

Pure: it is given the send callable and a clock.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

MAX_IN_FLIGHT = 8  # output calls one subscriber may leave unacknowledged
MAX_BACKLOG = 256  # further output messages kept for it; beyond that they are dropped
STALL_AFTER = 0.5  # seconds unacknowledged after which nobody waits for it


def drop_notice(item: dict[str, Any], dropped: int) -> dict[str, Any]:
    """Return an output message telling a slow subscriber what it missed."""
    return dict(item, chunks=[["stderr", f"[ipython1: {dropped} output message(s) dropped: "
                                         "this subscriber was too slow]\n"]])


class BoundedForwarder:
    """Forward messages to one subscriber: a few in flight, a bounded backlog."""

    def __init__(self, send: Callable[[Any], Deferred[Any]], clock: Any = None,
                 max_in_flight: int = MAX_IN_FLIGHT, max_backlog: int = MAX_BACKLOG,
                 stall_after: float = STALL_AFTER,
                 notice: Callable[[Any, int], Any] = drop_notice) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._send = send
        self._clock = clock
        self.max_in_flight = max_in_flight
        self.max_backlog = max_backlog
        self.stall_after = stall_after
        self._notice = notice
        self._in_flight: dict[int, float] = {}  # call number -> when sent
        self._calls = 0
        self.backlog: collections.deque[Any] = collections.deque()
        self.dropped_total = 0
        self.failed = False

    @property
    def stalled(self) -> bool:
        """Tell whether a call has waited for its acknowledgement too long."""
        now = self._clock.seconds()
        return any(now - sent > self.stall_after for sent in self._in_flight.values())

    def offer(self, item: Any, wait: bool = False) -> Deferred[Any] | None:
        """Send item (or keep or drop it); with wait, return a Deferred fired on delivery.

        wait is honoured only while the subscriber keeps up: a stalled or full
        forwarder never makes its caller wait.
        """
        if self.failed:
            return None
        if len(self._in_flight) < self.max_in_flight and not self.backlog:
            d = self._transmit(item)
            return d if wait and not self.stalled else None
        if len(self.backlog) < self.max_backlog:
            self.backlog.append(item)
        else:  # full: count it in a notice that takes its place in the backlog
            self.dropped_total += 1
            last = self.backlog[-1]
            if isinstance(last, _Dropped):
                last.count += 1
                last.item = item
            else:
                self.backlog.append(_Dropped(item))
        return None

    def _transmit(self, item: Any) -> Deferred[Any]:
        self._calls += 1
        call = self._calls
        self._in_flight[call] = self._clock.seconds()
        try:
            d = self._send(item)
        except Exception:
            self._in_flight.pop(call, None)
            self.failed = True
            return succeed(None)
        delivered: Deferred[Any] = Deferred()
        d.addBoth(self._acknowledged, call, delivered)
        return delivered

    def _acknowledged(self, result: Any, call: int, delivered: Deferred[Any]) -> None:
        from twisted.python.failure import Failure

        self._in_flight.pop(call, None)
        if isinstance(result, Failure):
            self.failed = True  # the session drops a subscriber whose calls fail
            self.backlog.clear()
        delivered.callback(None)
        self._drain()

    def _drain(self) -> None:
        while not self.failed and len(self._in_flight) < self.max_in_flight and self.backlog:
            item = self.backlog.popleft()
            if isinstance(item, _Dropped):
                item = self._notice(item.item, item.count)
            self._transmit(item)


class _Dropped:
    """Where dropped messages were, in a backlog: how many, and the last one."""

    def __init__(self, item: Any) -> None:
        self.count = 1
        self.item = item

"""Backpressure on a client that does not read its replies.

A client can pipeline commands whose replies are large and never read
them: the replies pile up in the controller (in its socket buffers, or as
unfetched non-blocking results) without bound. `ReplyBackpressure` keeps,
per session, the bytes of its replies that are not yet read: those still
waiting in its connections' send buffers and the non-blocking results it
has not fetched. Above ``high`` bytes the session is *held*:

- its connections that have replies to send are not read any more (its
  further calls wait in its own socket, and eventually in its own process);
- its commands waiting in the engine queues do not start (the other
  clients' commands go on: the queue skips a held client);

and once the bytes fall under ``low`` (it read, or fetched), it is released
and its commands go on in their order. So what a client can make the
controller hold is about ``high`` plus one reply per engine.

Pure of Foolscap: it is given the transports to watch, the stored bytes,
and a clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger()

UNREAD_ENV = "IPYTHON1_UNREAD_REPLY_MB"
DEFAULT_HIGH = 64 * 2**20  # bytes of unread replies at which a client is held
POLL = 0.05  # seconds between checks while a client is held


def high_water() -> int:
    """Bytes of unread replies per client before it is held ($IPYTHON1_UNREAD_REPLY_MB)."""
    try:
        return max(1, int(float(os.environ[UNREAD_ENV]) * 2**20))
    except (KeyError, ValueError):
        return DEFAULT_HIGH


def base_transport(transport: Any) -> Any:
    """Return the socket transport under wrappers (TLS): the one that buffers bytes."""
    seen = 0
    while transport is not None and not hasattr(transport, "dataBuffer") and seen < 5:
        transport = getattr(transport, "transport", None)
        seen += 1
    return transport


def unsent_bytes(transport: Any) -> int:
    """Return how many bytes a Twisted socket transport still has to send."""
    t = base_transport(transport)
    if t is None:
        return 0
    try:
        return len(t.dataBuffer) - t.offset + t._tempDataLen
    except (AttributeError, TypeError):
        return 0


class ReplyBackpressure:
    """Hold a client whose unread replies pass high; release it under low."""

    def __init__(self, client: str, held: set[str], kick: Callable[[], None],
                 transports: Callable[[], list[Any]], stored: Callable[[], int],
                 high: int | None = None, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.client = client
        self._held_clients = held  # shared with the engine queues: who must wait
        self._kick = kick  # let the queues start what was held
        self._transports = transports
        self._stored = stored
        self.high = high_water() if high is None else high
        self.low = self.high // 2
        self._clock = clock
        self._poll: Any = None
        self._paused: list[Any] = []
        self.held_count = 0

    @property
    def held(self) -> bool:
        return self.client in self._held_clients

    def unread(self) -> int:
        """Bytes of this client's replies not yet read by it."""
        return self._stored() + sum(unsent_bytes(t) for t in self._transports())

    def check(self, _: Any = None) -> Any:
        """Look again (after a reply, a fetch, or a tick); pass any argument through."""
        unread = self.unread()
        if not self.held and unread > self.high:
            self._hold(unread)
        elif self.held and unread <= self.low:
            self._release()
        return _

    def _hold(self, unread: int) -> None:
        self._held_clients.add(self.client)
        self.held_count += 1
        for transport in self._transports():
            t = base_transport(transport)
            # Only a connection with replies still to send: its pending writes
            # still show when the client goes away; another one must stay read
            # so that its end is noticed.
            if t is not None and hasattr(t, "stopReading") and unsent_bytes(t):
                t.stopReading()
                self._paused.append(t)
        log.info("client {c} holds {n} bytes of unread replies: its commands wait until "
                 "it reads them", c=self.client, n=unread)
        self._schedule()

    def _schedule(self) -> None:
        if self._poll is None or not self._poll.active():
            self._poll = self._clock.callLater(POLL, self._tick)

    def _tick(self) -> None:
        self._poll = None
        self.check()
        if self.held:
            self._schedule()

    def _release(self) -> None:
        self._held_clients.discard(self.client)
        paused, self._paused = self._paused, []
        for t in paused:
            if getattr(t, "connected", False):
                t.startReading()
        self._kick()

    def close(self) -> None:
        """Forget the client (it went away): never hold its queue again."""
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._held_clients.discard(self.client)
        self._paused = []
        self._kick()

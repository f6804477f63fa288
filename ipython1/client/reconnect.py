"""Reopening a client's session after its controller restarted.

A client object outlives its controller: a call made while the controller is
away waits (up to the client's timeout) for it to come back, reopens the
session at the profile's FURL, and goes on; a call that was in flight at the
loss fails with ``ConnectionLost`` and ``IN_FLIGHT_HINT``. Concurrent calls
share one attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ipython1.common.errors import ConnectionLost

RECONNECT_WAIT = 60.0  # seconds a call waits for the controller, unless the client's timeout says

IN_FLIGHT_HINT = (
    "the call was in flight, so it may or may not have run. This client object stays "
    "usable: later calls wait for the controller to come back (up to the client's timeout) "
    "and reconnect. Restart it with `ipcluster start -n N --daemon --reuse` (or "
    "`ipcontroller --reuse`); engines and queued tasks rejoin it.")


def channel_closed(channel: Any) -> bool:
    """Tell whether a client's local command channel was open and has closed.

    Only the controller's end closes it, when the controller goes: a client
    learns of a crash from it sooner than from Foolscap's connection.
    """
    return channel is not None and bool(getattr(channel, "closed", False))


def refused(error: BaseException) -> bool:
    """Tell whether waiting cannot help: the controller answered but does not know
    the FURL (Foolscap's unknown swiss number: a revoked user, or another cluster
    on that port), or the FURL file is gone (a controller never deletes its own)."""
    text = str(error)
    return "unable to find reference" in text or "cannot read FURL file" in text


class Reconnector:
    """Reopen a session with retries and backoff; one attempt for all waiting calls."""

    def __init__(self, reopen: Callable[[float], Deferred[Any]],
                 install: Callable[[Any], None], what: str,
                 timeout: float | None = RECONNECT_WAIT, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.reopen = reopen  # (seconds) -> Deferred firing with the new connection
        self.install = install  # takes what reopen fired with
        self.what = what
        self.timeout = RECONNECT_WAIT if timeout is None else timeout
        self.clock = clock
        self._waiters: list[Deferred[None]] = []
        # Set when the controller refused the FURL (a revoked user): waiting cannot help.
        self.refused: ConnectionLost | None = None

    def ensure(self) -> Deferred[None]:
        """Fire once the session is open again; fail with ConnectionLost at the deadline."""
        if self.refused is not None:
            return defer.fail(self.refused)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if len(self._waiters) == 1:
            self._attempt().addBoth(self._fire)
        return d

    @defer.inlineCallbacks
    def _attempt(self) -> Any:
        deadline = self.clock.seconds() + self.timeout
        delay = 0.1
        while True:
            left = deadline - self.clock.seconds()
            try:
                opened = yield self.reopen(max(0.5, min(5.0, left)))
            except Exception as e:
                if refused(e):  # the controller answered: waiting will not help
                    self.refused = ConnectionLost(
                        f"{self.what}: the controller no longer knows this client's FURL "
                        f"(revoked?): {e}")
                    raise self.refused from None
                if self.clock.seconds() + delay > deadline:
                    raise ConnectionLost(
                        f"{self.what}: the controller did not come back within "
                        f"{self.timeout:g} s ({e}); restart it with `ipcluster start -n N "
                        "--daemon --reuse`, then call again") from None
                yield task.deferLater(self.clock, delay, lambda: None)
                delay = min(delay * 2, 1.0)
                continue
            self.install(opened)
            return None

    def _fire(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

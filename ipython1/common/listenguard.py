"""Listener guards: what any local account or network peer can do to a listening socket.

Every listener (the Foolscap port, the relay, the command channel, an
engine's data socket) lets anyone connect before they prove anything. A
`ListenerGuard` bounds that:

- at most ``max_pending`` connections may be unauthenticated at once; more
  are closed as they arrive;
- each must finish its handshake within ``deadline`` seconds (a FURL's TLS
  negotiation, a pairing id, a secret), or it is closed;
- running out of file descriptors (EMFILE) never ends the listener: as
  Twisted's ports do, one descriptor is kept in reserve to accept and shed
  the waiting connection, and accepting goes on;
- refusals and accept failures are logged, at most once per ``log_every``
  seconds per listener, with counts: a flood shows in the log without
  filling it.

``GuardedNegotiation`` applies a guard to a Foolscap Tub's listener.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from foolscap.negotiate import Negotiation
from twisted.logger import Logger

log = Logger()

MAX_UNAUTHENTICATED = 128  # connections per listener that have not finished their handshake
LOG_EVERY = 10.0  # seconds between two flood reports of one listener
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def handshake_deadline() -> float:
    """Seconds a new connection has to authenticate ($IPYTHON1_HANDSHAKE_TIMEOUT, 5)."""
    try:
        return max(0.1, float(os.environ.get("IPYTHON1_HANDSHAKE_TIMEOUT", "5")))
    except ValueError:
        return 5.0


def _emit_warning(text: str) -> None:
    """Log from any thread (the relay and data sockets run their own)."""
    from twisted.internet import reactor
    from twisted.python import threadable

    if threadable.isInIOThread():
        log.warn("{text}", text=text)
    else:
        reactor.callFromThread(log.warn, "{text}", text=text)


class ListenerGuard:
    """Cap, time out and report one listener's unauthenticated connections (thread-safe)."""

    def __init__(self, name: str, max_pending: int = MAX_UNAUTHENTICATED,
                 deadline: float | None = None, log_every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[str], None] = _emit_warning) -> None:
        self.name = name
        self.max_pending = max_pending
        self.deadline = handshake_deadline() if deadline is None else deadline
        self.log_every = log_every
        self._clock = clock
        self._emit = emit
        self._lock = threading.Lock()
        self.pending = 0
        self.refused = 0  # since the last report
        self.timed_out = 0
        self.accept_errors: dict[str, int] = {}
        self.refused_total = 0
        self._last_report = -float("inf")
        self._flush: threading.Timer | None = None
        self._reserve: int | None = _reserve_descriptor()

    # -- counting --

    def admit(self) -> bool:
        """Take a slot for a new connection; False (and counted) when all are taken."""
        with self._lock:
            if self.pending >= self.max_pending:
                self.refused += 1
                self.refused_total += 1
                admitted = False
            else:
                self.pending += 1
                admitted = True
        if not admitted:
            self._report()
        return admitted

    def release(self) -> None:
        """Give a slot back: the connection authenticated, or closed."""
        with self._lock:
            self.pending = max(0, self.pending - 1)

    def timed_out_one(self) -> None:
        """Count a connection closed for not finishing its handshake in time."""
        with self._lock:
            self.timed_out += 1
        self._report()

    def _report(self, force: bool = False) -> None:
        with self._lock:
            now = self._clock()
            if not force and now - self._last_report < self.log_every:
                if self._flush is None:  # report the rest when the window ends
                    self._flush = threading.Timer(
                        self._last_report + self.log_every - now, self._report, (True,))
                    self._flush.daemon = True
                    self._flush.start()
                return
            self._flush = None
            if not (self.refused or self.timed_out or self.accept_errors):
                return
            parts = []
            if self.refused:
                parts.append(f"{self.refused} connection(s) refused ({self.max_pending} "
                             "unauthenticated ones already open)")
            if self.timed_out:
                parts.append(f"{self.timed_out} closed for not authenticating within "
                             f"{self.deadline:g} s")
            for why, n in sorted(self.accept_errors.items()):
                parts.append(f"accept failed {n} time(s): {why}")
            self.refused, self.timed_out, self.accept_errors = 0, 0, {}
            self._last_report = now
        self._emit(f"{self.name}: possible connection flood: " + "; ".join(parts))

    # -- accepting on a blocking listener (threads) --

    def accept(self, listener: socket.socket) -> socket.socket | None:
        """Accept one connection; None if it failed or was refused (call again).

        Raises OSError only when the listener itself is gone.
        """
        try:
            sock, _ = listener.accept()
        except OSError as e:
            if e.errno not in _OUT_OF_DESCRIPTORS and e.errno != errno.ECONNABORTED:
                raise
            self._accept_failed(e, listener)
            return None
        if not self.admit():
            _close(sock)
            return None
        return sock

    def serve(self, listener: socket.socket, handle: Callable[[socket.socket], Any],
              closed: Callable[[], bool]) -> None:
        """Accept until closed(); handle each admitted connection on a thread of its own.

        Call on a thread of its own. With no thread to spare, a connection is shed
        and accepting goes on; an error of the listener ends the loop once closed().
        """
        while not closed():
            try:
                sock = self.accept(listener)
            except OSError:
                if closed():
                    return
                time.sleep(0.05)
                continue  # do not let one failure end the service
            if sock is None:
                continue
            try:
                threading.Thread(target=handle, args=(sock,), daemon=True).start()
            except RuntimeError:  # no more threads: shed it, keep accepting
                self.release()
                sock.close()

    def _accept_failed(self, error: OSError, listener: socket.socket) -> None:
        with self._lock:
            why = os.strerror(error.errno) if error.errno else str(error)
            self.accept_errors[why] = self.accept_errors.get(why, 0) + 1
        self._report()
        if error.errno in _OUT_OF_DESCRIPTORS:
            # Shed the connection that cannot be taken, with the descriptor kept
            # for this, so that the backlog drains and accept() does not spin.
            with self._lock:
                reserve, self._reserve = self._reserve, None
            if reserve is not None:
                os.close(reserve)
                try:
                    _close(listener.accept()[0])
                except OSError:
                    pass
                self._reserve = _reserve_descriptor()
            else:
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            reserve, self._reserve = self._reserve, None
        if reserve is not None:
            os.close(reserve)


def _reserve_descriptor() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def guarded_negotiation(guard: ListenerGuard) -> type[Negotiation]:
    """Return a Foolscap Negotiation class that applies guard to incoming connections."""

    class GuardedNegotiation(Negotiation):  # type: ignore[misc]
        """Foolscap's negotiation, capped and with a short deadline (see ListenerGuard)."""

        SERVER_TIMEOUT = guard.deadline
        _slot = False

        def connectionMadeServer(self) -> None:
            if not guard.admit():
                self.transport.abortConnection()
                return
            self._slot = True
            super().connectionMadeServer()

        def negotiationTimedOut(self) -> None:
            guard.timed_out_one()
            super().negotiationTimedOut()

        def _free_slot(self) -> None:
            if self._slot:
                self._slot = False
                guard.release()

        def stopNegotiationTimer(self) -> None:
            super().stopNegotiationTimer()
            self._free_slot()  # negotiated (or failed): no longer unauthenticated

        def connectionLost(self, reason: Any) -> None:
            self._free_slot()
            super().connectionLost(reason)

    return GuardedNegotiation


class RepeatedLogLimiter:
    """A twisted.logger filter predicate: let a listener's EMFILE message through once
    per ``every`` seconds (Twisted's ports log one per shed connection: a flood
    would fill the disk); the next one let through says how many were held back."""

    MARKERS = ("EMFILE", "Could not accept new connection")

    def __init__(self, every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, event: dict[str, Any]) -> Any:
        from twisted.logger import PredicateResult

        text = str(event.get("log_format") or event.get("format") or event.get("message", ""))
        if not any(m in text for m in self.MARKERS):
            return PredicateResult.maybe
        key = text[:60]
        now = self._clock()
        if now - self._last.get(key, -float("inf")) < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return PredicateResult.no
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            event["log_format"] = text.replace("{", "{{").replace("}", "}}") + \
                f" (and {held} more like it in the last {self.every:g} s)"
        return PredicateResult.maybe

"""The client's reactor thread, and waiting on it with a deadline.

The reactor starts on first use (not at import), without signal handlers,
in a daemon thread, and stops at exit. Every call waits with a deadline;
when the reactor stops, every waiting call fails with ConnectionLost.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from ipython1.common.errors import (
    ClientTimeout,
    ConnectionLost,
    Interrupted,
    KernelError,
)

DEBUGGER_POLL = 0.1  # s: how often a blocking wait looks for an engine's pdb prompt


class ReactorThread:
    """Run the Twisted reactor in a daemon thread; submit calls to it."""

    _lock = threading.Lock()
    _instance: ReactorThread | None = None

    @classmethod
    def get(cls) -> ReactorThread:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._stopped = False
        if not reactor.running:
            self.thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False},
                name="ipython1-reactor", daemon=True)
            self.thread.start()
            atexit.register(self.stop)

    def submit(self, fn: Callable[..., Any], *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Call fn in the reactor thread; its (Deferred) result arrives in a Future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._stopped:
            future.set_exception(ConnectionLost("the client's reactor has stopped"))
            return future
        self._futures.add(future)

        def call() -> None:
            d = defer.maybeDeferred(fn, *args, **kwargs)

            def done(result: Any) -> None:
                self._futures.discard(future)
                if future.done():
                    return
                if isinstance(result, Failure):
                    error = result.value
                    if not isinstance(error, BaseException):  # e.g. a Foolscap CopiedFailure
                        error = KernelError(result.getErrorMessage())
                    future.set_exception(error)
                else:
                    future.set_result(result)

            d.addBoth(done)

        self.reactor.callFromThread(call)
        return future

    def stop(self) -> None:
        """Stop the reactor; fail every waiting call."""
        if self._stopped:
            return
        self._stopped = True
        for future in list(self._futures):
            if not future.done():
                future.set_exception(ConnectionLost("the client's reactor stopped"))
        if self.reactor.running:
            self.reactor.callFromThread(self.reactor.stop)


def _wait(future: concurrent.futures.Future[Any], timeout: float | None,
          on_interrupt: Callable[[], str] | None = None,
          debugger: Callable[[], float] | None = None) -> Any:
    """Wait for a future; Ctrl-C runs on_interrupt (e.g. interrupt engines).

    Then Interrupted carries what on_interrupt said, and IPython shows just that.
    With debugger, serve engine pdb prompts while waiting: debugger() drives any
    waiting debugger and returns the seconds it took, which the timeout excludes.
    """
    try:
        if debugger is None:
            return future.result(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None:
                deadline += debugger()
            else:
                debugger()
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return future.result(DEBUGGER_POLL if left is None
                                     else max(0.0, min(DEBUGGER_POLL, left)))
            except concurrent.futures.TimeoutError:
                if left is not None and left <= DEBUGGER_POLL:
                    raise
    except concurrent.futures.TimeoutError:
        raise ClientTimeout(f"no result within {timeout:g} s") from None
    except KeyboardInterrupt:
        if on_interrupt is None:
            raise
        raise Interrupted(on_interrupt()) from None


def _wait_for_restarts(client: Any, timeout: float | None) -> None:
    """Let calls made while the controller is down wait up to the client's timeout."""
    if timeout is not None and getattr(client, "reconnector", None) is not None:
        # A little under: the call ends with ConnectionLost's advice, not ClientTimeout.
        client.reconnector.timeout = timeout * 0.9

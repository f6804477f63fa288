"""A non-blocking result of a multi-engine command: wait, poll, or fetch it later."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ipython1.client import multiengine as asyncclient
from ipython1.client.reactor import _wait
from ipython1.client.results import ExecuteResult
from ipython1.common.errors import (
    ClientTimeout,
    CompositeError,
    KernelError,
    ResultNotReady,
)

if TYPE_CHECKING:
    from ipython1.client.blocking import MultiEngineClient


def _split_prompt(text: str) -> tuple[str, str]:
    """Split pdb's output into what it printed and its trailing prompt."""
    at = text.rfind("(Pdb")
    if at >= 0 and text.endswith(") ") and "\n" not in text[at:]:
        return text[:at], text[at:]
    return text, "(Pdb) "


class PendingResult:
    """The result of a non-blocking call, fetched later with get_result()."""

    def __init__(self, client: MultiEngineClient, pending: asyncclient.AsyncPendingResult,
                 submitted: float | None = None) -> None:
        self.client = client
        self._pending = pending
        self.id = pending.id
        self._result: Any = None
        self._error: BaseException | None = None
        self._done = False
        # The controller hands a result over once: a wait that timed out keeps
        # its fetch in flight here, and the next call waits on that same fetch.
        self._fetch: concurrent.futures.Future[Any] | None = None
        self._fetch_blocks = False
        self.submitted = time.monotonic() if submitted is None else submitted
        self._completed: float | None = None
        self._callbacks: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def get_result(self, block: bool = True, timeout: float | None = None) -> Any:
        """Return the result; without block, raise ResultNotReady if not done.

        A wait that times out (ClientTimeout) loses nothing: the result stays
        fetchable until it is fetched.
        """
        return self._called_back(self._get(block, timeout if timeout is not None
                                           else self.client.timeout))

    def _get(self, block: bool, timeout: float | None) -> Any:

        while not self._done:
            if self._fetch is None:
                self._fetch = self.client._loop.submit(self._pending.get_result, block)
                self._fetch_blocks = block
            elif not block and not self._fetch.done():
                raise ResultNotReady(f"result {self.id} is not ready yet")
            try:
                self._result = _wait(self._fetch, timeout, lambda: (
                    f"stopped waiting for result {self.id}; the engines go on, and "
                    "get_result() fetches it later"), debugger=self.client._serve_debugger)
            except ClientTimeout:
                raise
            except ResultNotReady:
                self._fetch = None
                if block and not self._fetch_blocks:
                    continue  # that was an earlier ready(): wait now
                raise
            except KernelError as e:
                self._error = e
            self._fetch = None
            self._done = True
            self._completed = time.monotonic()
        if self._error is not None:
            raise self._error
        return self._result

    def ready(self) -> bool:
        """Tell whether the result (or its error) has arrived, without waiting for it."""
        if self._fetch is not None and not self._fetch.done():
            return False
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to timeout s (None: for ever) for the result; return whether it came.

        The result is kept: get_result() returns it (or raises its error) at once.
        """

        try:
            if timeout == 0:  # ask once, without waiting on the controller
                self._get(block=False, timeout=self.client.timeout)
            else:
                self._get(block=True, timeout=timeout)
        except (ResultNotReady, ClientTimeout):
            return False
        except KernelError:
            pass  # done, with an error: get_result() raises it
        return True

    @property
    def r(self) -> Any:
        return self.get_result()

    # -- IPython 0.10 and ipyparallel habits (issue 20) --

    def add_callback(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Make get_result() return f(result, *args, **kwargs); callbacks chain in order.

        As in IPython 0.10 they run when the result is fetched, in the caller's
        thread; an error they raise is raised by get_result().
        """
        if not callable(f):
            raise TypeError(f"add_callback() takes a callable, not {type(f).__name__}")
        self._callbacks.append((f, args, kwargs))

    def _called_back(self, result: Any) -> Any:
        for f, args, kwargs in self._callbacks:
            result = f(result, *args, **kwargs)
        return result

    @property
    def elapsed(self) -> float:
        """Seconds since the call was sent: until its result arrived here, or until now."""
        end = self._completed if self._completed is not None else time.monotonic()
        return end - self.submitted

    @property
    def stdout(self) -> Any:
        """What each engine printed (waits for the result): a str per engine, one for an
        int target; None for calls that print nothing (push, pull...)."""
        try:
            value = self._get(True, self.client.timeout)  # without the callbacks
        except KernelError:
            value = self._error
        kept = getattr(self._pending, "stdout", None)  # apply and map (call_with_stdout)
        return kept if kept is not None else _stdout_of(value)

    def __repr__(self) -> str:
        return f"<PendingResult id={self.id} {'done' if self._done else 'pending'}>"


def _stdout_of(value: Any) -> Any:
    """Each engine's stdout in a command's result (or error), if the result keeps it."""
    if isinstance(value, ExecuteResult):
        return value.stdout
    record = getattr(value, "record", None)
    if isinstance(value, KernelError) and isinstance(record, dict):
        return record.get("stdout", "")
    if isinstance(value, CompositeError):
        parts = [(r.engine_id, r.stdout) for r in value.results if isinstance(r, ExecuteResult)]
        parts += [(e.engine_id, (e.record or {}).get("stdout", "")) for e in value.errors
                  if isinstance(getattr(e, "record", None), dict)]
        return [text for _, text in sorted(parts, key=lambda p: p[0] if p[0] is not None
                                           else -1)] or None
    if isinstance(value, list) and value and all(isinstance(v, ExecuteResult) for v in value):
        return [v.stdout for v in value]
    return None

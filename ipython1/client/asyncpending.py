"""Non-blocking results of the async multi-engine client, and what is done to them on arrival."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ipython1.common import scatter as scatter_mod
from ipython1.common.errors import (
    CompositeError,
)
from ipython1.transport.data import buffers

if TYPE_CHECKING:
    from ipython1.client.multiengine import AsyncMultiEngineClient


class AsyncPendingResult:
    """A result computed on the controller's side, fetched later by id."""

    def __init__(self, client: AsyncMultiEngineClient, pending_id: int,
                 finish: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.client = client
        self.id = pending_id
        self._finish = finish

    def get_result(self, block: bool = True) -> Deferred[Any]:
        """Fire with the result; without block, fail with ResultNotReady if not done."""
        d = self.client._remote("get_pending_result", self.id, block)
        return d.addCallback(self.client._fetch_blobs).addCallback(self._finish)


class _JoiningPending(AsyncPendingResult):
    """A pending map or gather: joins the parts when fetched."""

    def __init__(self, inner: AsyncPendingResult) -> None:
        super().__init__(inner.client, inner.id, inner._finish)

    def get_result(self, block: bool = True) -> Deferred[Any]:
        d = super().get_result(block)
        return d.addCallback(_join_parts)


def call_with_stdout(func: Callable[..., Any], /, *args: Any,
                     **kwargs: Any) -> tuple[Any, str]:
    """On an engine: call func; return (its value, what it printed). Output still streams."""
    import io
    import sys

    kept = io.StringIO()
    live = sys.stdout

    class Tee:
        def write(self, text: str) -> int:
            kept.write(text)
            return live.write(text)

        def __getattr__(self, name: str) -> Any:
            return getattr(live, name)

    sys.stdout = Tee()
    try:
        value = func(*args, **kwargs)
    finally:
        sys.stdout = live
    return value, kept.getvalue()


class _StdoutPending(AsyncPendingResult):
    """A pending apply/map run through call_with_stdout: values out, stdout kept."""

    def __init__(self, inner: AsyncPendingResult, single: bool, join: bool = False) -> None:
        super().__init__(inner.client, inner.id, inner._finish)
        self._inner = inner
        self._single = single
        self._join = join
        self.stdout: Any = None

    def get_result(self, block: bool = True) -> Deferred[Any]:
        def split(result: Any) -> Any:
            if self._single:
                value, self.stdout = result
                return value
            self.stdout = [out for _, out in result]
            values = [value for value, _ in result]
            return [x for chunk in values for x in chunk] if self._join else values

        def unwrap(failure: Failure) -> Failure:
            if failure.check(CompositeError):  # the engines that succeeded: values only
                failure.value.results = [r[0] if isinstance(r, tuple) and len(r) == 2 else r
                                         for r in failure.value.results]
            return failure

        return self._inner.get_result(block).addCallbacks(split, unwrap)


class _ThenPending(AsyncPendingResult):
    """A pending result whose value goes through a function when fetched."""

    def __init__(self, inner: AsyncPendingResult, then: Callable[[Any], Any]) -> None:
        super().__init__(inner.client, inner.id, inner._finish)
        self._inner = inner
        self._then = then

    def get_result(self, block: bool = True) -> Deferred[Any]:
        return self._inner.get_result(block).addCallback(self._then)


def _then(d: Deferred[Any], block: bool, then: Callable[[Any], Any]) -> Deferred[Any]:
    """Pass a command's result through then(), now (block) or when it is fetched."""
    if block:
        return d.addCallback(then)
    return d.addCallback(lambda pending: _ThenPending(pending, then))


def _join_parts(parts: Any) -> Any:
    if parts and isinstance(parts[0], list):
        return [x for chunk in parts for x in chunk]
    return _join(parts)


def _join(parts: list[Any]) -> Any:
    """Join gathered parts; a large array lands in reused memory (transport.data.buffers.POOL)."""
    return scatter_mod.join(parts, buffer=buffers.join_buffer)


def _then_join(pending: AsyncPendingResult) -> AsyncPendingResult:
    class _Gather(AsyncPendingResult):
        def get_result(self, block: bool = True) -> Deferred[Any]:
            d = AsyncPendingResult.get_result(self, block)
            return d.addCallback(lambda parts: _join(
                parts if isinstance(parts, list) else [parts]))

    return _Gather(pending.client, pending.id, pending._finish)

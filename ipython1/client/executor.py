"""concurrent.futures Executors over a cluster: ``mec.executor()`` and ``tc.executor()``.

``submit(f, *args, **kwargs)`` runs one call of f and returns a
``concurrent.futures.Future``, so ``as_completed``, ``wait`` and
``Executor.map`` work as with a process pool. The multi-engine executor sends
each call to the next of its engines in turn (its own queue per engine); the
task executor runs each call as a MapTask on whichever engine is free.
Futures complete in the client's reactor thread; ``shutdown()`` waits for
them but leaves the client connected.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from collections.abc import Callable
from typing import Any

from ipython1.client.taskspec import MapTask


class _ClusterExecutor(concurrent.futures.Executor):
    """What both executors share: the futures in flight, shutdown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shutdown = False
        self._futures: set[concurrent.futures.Future[Any]] = set()

    def _start(self, make: Callable[[], concurrent.futures.Future[Any]]
               ) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            future = make()
            self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; with wait, return once every submitted call finished."""
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for future in pending:
                future.cancel()  # the call may still run; its result is dropped
        if wait:
            concurrent.futures.wait(pending)


class MultiEngineExecutor(_ClusterExecutor):
    """Run each submitted call on one engine of targets, round robin."""

    def __init__(self, client: Any, targets: Any = None) -> None:
        super().__init__()
        self.client = client
        targets = client.targets if targets is None else targets
        ids = client.get_ids() if targets == "all" else (
            [targets] if isinstance(targets, int) else list(targets))
        if not ids:
            raise ValueError("an executor needs at least one engine")
        self.targets = ids
        self._next = itertools.cycle(ids)

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Call fn(*args, **kwargs) on the next engine; return a Future of its value."""
        engine_id = next(self._next)
        return self._start(lambda: self.client._loop.submit(
            self.client._async.apply, fn, *args, targets=engine_id, block=True, **kwargs))


class TaskExecutor(_ClusterExecutor):
    """Run each submitted call as a MapTask on whichever engine is free."""

    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__()
        self.client = client
        self.options = options  # retries, timeout, priority... for every task

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Queue fn(*args, **kwargs) as a task; return a Future of its value."""
        tid = self.client.run(MapTask(fn, args, kwargs, **self.options))
        return self._start(lambda: self.client._loop.submit(self._value, tid))

    def _value(self, tid: int) -> Any:
        """Fire with the task's value (raise its error); its result is then cleared."""
        d = self.client._async.get_task_result(tid, True)

        def unwrap(result: Any) -> Any:
            self.client._async.clear([tid]).addErrback(lambda _: None)
            return result.result

        return d.addCallback(unwrap)

"""The blocking task farm client: ``TaskClient`` and the tasks it has in flight.

A thin wrapper, like ``MultiEngineClient``, that runs an `AsyncTaskClient`
in the client's reactor thread; every call waits with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ipython1.client import connect
from ipython1.client.executor import TaskExecutor
from ipython1.client.parallel import Parallel, TaskMapper
from ipython1.client.progress import progress_bar
from ipython1.client.reactor import ReactorThread, _wait, _wait_for_restarts
from ipython1.client.taskspec import TaskResult, join_map_results, map_specs
from ipython1.common.errors import (
    ClientTimeout,
    Interrupted,
)

POLL_SECONDS = 0.5  # how long one wait on the controller lasts, so Ctrl-C is prompt


WAIT_WINDOW = 4096  # task ids per wait() call while collecting results


def _stopped_waiting(tasks: int) -> Interrupted:
    """Ctrl-C while waiting on tasks: say, in one line, that they go on."""
    return Interrupted(f"stopped waiting for {tasks} task(s); they go on running "
                       "(abort(tid) cancels one that waits)")


class PendingTasks:
    """Tasks in flight (e.g. a non-blocking map): wait, watch, fetch."""

    def __init__(self, client: TaskClient, tids: list[int], sizes: list[int] | None = None,
                 join: Callable[[list[TaskResult]], Any] | None = None) -> None:
        self.client = client
        self.tids = list(tids)
        self.sizes = sizes or [1] * len(self.tids)
        self._join = join
        self._results: dict[int, TaskResult] = {}

    def ready(self) -> bool:
        """Tell whether every task has finished (fetching what has)."""
        self._collect(0)
        return len(self._results) == len(self.tids)

    def _collect(self, timeout: float | None, bar: Any = None) -> None:
        """Fetch finished results, waiting up to timeout s for the next ones."""
        pending = [t for t in self.tids if t not in self._results]
        if not pending:
            return
        # Wait on the oldest ones only: sending every pending id on every poll
        # made a 20,000-task map quadratic. Tasks mostly finish in order.
        finished = self.client._call(self.client._async.wait, pending[:WAIT_WINDOW], False,
                                     timeout)
        if finished:
            records = self.client._call(self.client._async.get_task_results, finished)
            for tid, res in zip(finished, records, strict=True):
                self._results[tid] = res
            if bar is not None:
                size = dict(zip(self.tids, self.sizes, strict=True))
                bar.update(sum(size[t] for t in finished))
            if self._join is not None:
                self.client._call(self.client._async.clear, finished)

    def wait(self, timeout: float | None = None, progress: bool | None = False) -> bool:
        """Wait until every task finished or timeout s passed; return whether all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = progress_bar(sum(self.sizes), "tasks", progress) if progress is not False \
            else None
        try:
            while len(self._results) < len(self.tids):
                left = POLL_SECONDS if deadline is None else min(
                    POLL_SECONDS, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._collect(left, bar)
        except KeyboardInterrupt:
            raise _stopped_waiting(len(self.tids) - len(self._results)) from None
        finally:
            if bar is not None:
                bar.close()
        return True

    def wait_interactive(self, timeout: float | None = None) -> bool:
        """Wait with a progress bar counting items (in a terminal or notebook)."""
        return self.wait(timeout, progress=None)

    def get_result(self, timeout: float | None = None) -> Any:
        """Wait and return the results (joined for a map); raise the first failure."""
        if not self.wait(timeout):
            raise ClientTimeout(f"tasks not finished within {timeout:g} s")
        results = [self._results[t] for t in self.tids]
        return self._join(results) if self._join is not None else results

    def __repr__(self) -> str:
        return f"<PendingTasks {len(self._results)}/{len(self.tids)} finished>"


class TaskClient:
    """Run independent tasks on whichever engines are free; blocking.

    ``furl_or_file`` is a FURL, a FURL file, or None for the profile's
    ``security/ipcontroller-task.furl``. See docs/tasks.md.
    """

    def __init__(self, furl_or_file: Any = None, profile: str = "default",
                 timeout: float | None = None, connect_timeout: float = 10.0) -> None:
        self._loop = ReactorThread.get()
        self.timeout = timeout
        future = self._loop.submit(connect.get_task_client, furl_or_file, profile,
                                   connect_timeout)
        self._async = _wait(future, connect_timeout + 5)
        _wait_for_restarts(self._async, timeout)

    def _call(self, method: Callable[..., Any], *args: Any, timeout: float | None = None,
              **kwargs: Any) -> Any:
        return _wait(self._loop.submit(method, *args, **kwargs),
                     self.timeout if timeout is None else timeout)

    @property
    def local_channel(self) -> bool:
        """Tell whether calls take the controller's local command channel (same host)."""
        return bool(self._async.local_channel)

    def run(self, task: Any, block: bool = False) -> int:
        """Queue a StringTask or MapTask; return its task id at once (block: 0.10's, unused)."""
        if not hasattr(task, "to_wire"):
            raise TypeError(f"run() takes a StringTask or a MapTask, not {type(task).__name__}")
        spec = task.to_wire()  # serialize here, not on the reactor thread
        tid = self._async.try_queue(spec)  # no reactor round trip while ids last
        return tid if tid is not None else self._call(self._async.run_spec, spec)

    def get_task_result(self, tid: int, block: bool = False,
                        timeout: float | None = None) -> TaskResult | None:
        """Return the task's TaskResult, or None if it has not finished (unless block)."""
        if not block:
            return self._call(self._async.get_task_result, tid, False)
        pending = PendingTasks(self, [tid])
        pending.get_result(timeout if timeout is not None else self.timeout)
        return pending._results[tid]

    def barrier(self, tids: Sequence[int], timeout: float | None = None,
                progress: bool | None = None) -> None:
        """Wait until every task of tids has finished (with a progress bar)."""
        # Only wait: results stay on the controller for get_task_result.
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = list(tids)
        bar = progress_bar(len(remaining), "tasks", progress)
        try:
            while remaining:
                left = POLL_SECONDS if deadline is None else min(
                    POLL_SECONDS, deadline - time.monotonic())
                if left <= 0:
                    raise ClientTimeout(f"{len(remaining)} task(s) not finished within "
                                        f"{timeout:g} s")
                finished = set(self._call(self._async.wait, remaining[:WAIT_WINDOW], False,
                                          left))
                if finished:
                    bar.update(len(finished))
                    remaining = [t for t in remaining if t not in finished]
        except KeyboardInterrupt:
            raise _stopped_waiting(len(remaining)) from None
        finally:
            bar.close()

    def pending(self, tids: Sequence[int]) -> PendingTasks:
        """Wrap task ids to wait for them (wait_interactive) and fetch their results."""
        return PendingTasks(self, list(tids))

    def map(self, func: Callable[..., Any], *seqs: Sequence[Any], chunksize: int | None = None,
            block: bool = True, progress: bool | None = None, **options: Any) -> Any:
        """Apply func to each element on any engines; return results in order.

        The sequence is cut into chunks (about 8 per engine by default) that
        run as MapTasks; options (retries, timeout, priority...) apply to each.
        """
        engines = len(self.queue_status()["engines"])
        specs, sizes = map_specs(func, seqs, chunksize, engines, options)
        tids = self._call(self._async.run_specs, specs)

        pending = PendingTasks(self, tids, sizes, join_map_results)
        if not block:
            return pending
        pending.wait(progress=progress)
        return pending.get_result()

    def abort(self, tid: int) -> None:
        """Cancel a queued task; it fails with TaskAborted."""
        self._call(self._async.abort, tid)

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        """Return counts of pending, running (per engine), succeeded and failed tasks."""
        return self._call(self._async.queue_status, verbose)

    def clear(self, tids: Sequence[int] | None = None) -> int:
        """Drop finished results (these, or all of this client's) from the controller."""
        return self._call(self._async.clear, None if tids is None else list(tids))

    def spin(self) -> None:
        """Make the controller hand ready tasks to idle engines now."""
        self._call(self._async.spin)

    # -- IPython 0.10 names and executors (issue 20) --

    def mapper(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
               recovery_task: Any = None, depend: Any = None, block: bool = True,
               **options: Any) -> Any:
        """Return a TaskMapper: m.map(f, xs) runs MapTasks with these options."""
        return TaskMapper(self, clear_before, clear_after, retries, recovery_task, depend,
                          block, **options)

    def parallel(self, clear_before: bool = False, clear_after: bool = False, retries: int = 0,
                 recovery_task: Any = None, depend: Any = None, block: bool = True,
                 **options: Any) -> Any:
        """Return a decorator: @tc.parallel() def f(x): ...; f(xs) maps f with tasks."""
        return Parallel(self.mapper(clear_before, clear_after, retries, recovery_task, depend,
                                    block, **options))

    def executor(self, **options: Any) -> Any:
        """Return a concurrent.futures.Executor running each call as a task (options:
        retries, timeout, priority...)."""
        return TaskExecutor(self, **options)

    @classmethod
    def _wrap(cls, async_client: Any, timeout: float | None = None) -> TaskClient:
        self = cls.__new__(cls)
        self._loop = ReactorThread.get()
        self.timeout = timeout
        self._async = async_client
        _wait_for_restarts(async_client, timeout)
        return self

    def close(self) -> None:
        """Disconnect from the controller."""
        self._loop.reactor.callFromThread(self._async.disconnect)

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

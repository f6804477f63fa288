"""A task's timeout: interrupt the shell thread when a task outlives it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipython1.engine.runner import ShellRunner


class TaskWatchdog:
    """Interrupt the shell thread when a task outlives its timeout."""

    def __init__(self, runner: ShellRunner) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._current: Any = None
        self._fired: Any = None
        self._timer: threading.Timer | None = None

    def start(self, tid: Any, timeout: float) -> None:
        with self._lock:
            self._current, self._fired = tid, None
            self._timer = threading.Timer(timeout, self._expire, (tid,))
            self._timer.daemon = True
            self._timer.start()

    def _expire(self, tid: Any) -> None:
        with self._lock:
            if self._current == tid:
                self._fired = tid
                self._runner.interrupt()

    def fired(self, tid: Any) -> bool:
        return self._fired == tid

    def finish(self, tid: Any) -> bool:
        """Stop watching tid; return whether its timer fired."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._current = None
            return self._fired == tid

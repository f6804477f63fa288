"""EngineQueue: one FIFO of commands per engine, run one at a time.

Pure: it knows nothing of Foolscap; it is given a ``send`` callable that
delivers one command to the engine and returns a Deferred.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ipython1.kernel.errors import EngineError, QueueCleared

_command_ids = itertools.count(1)


@dataclass
class Command:
    """One operation for one engine: a method name and its arguments."""

    op: str
    args: tuple[Any, ...] = ()
    client: str = ""
    description: str = ""
    id: int = field(default_factory=lambda: next(_command_ids))
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    deferred: Deferred[Any] = field(default_factory=Deferred, repr=False)

    def summary(self) -> dict[str, Any]:
        """Describe the command for queue_status (never its values)."""
        return {
            "id": self.id,
            "op": self.op,
            "client": self.client,
            "description": self.description,
            "submitted": self.submitted,
            "started": self.started,
        }


class EngineQueue:
    """Run one engine's commands one at a time, in submission order."""

    def __init__(self, engine_id: int, send: Callable[[Command], Deferred[Any]]) -> None:
        self.engine_id = engine_id
        self._send = send
        self._waiting: collections.deque[Command] = collections.deque()
        self.running: Command | None = None
        self._dead: EngineError | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def submit(self, command: Command) -> Deferred[Any]:
        """Queue a command; the Deferred fires with the engine's reply."""
        if self._dead is not None:
            command.deferred.errback(Failure(self._dead))
            return command.deferred
        self._waiting.append(command)
        self._next()
        return command.deferred

    def _next(self) -> None:
        if self.running is not None or not self._waiting or self._dead is not None:
            return
        command = self.running = self._waiting.popleft()
        command.started = time.time()
        try:
            d = self._send(command)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        d.addBoth(self._finished, command)

    def _finished(self, result: Any, command: Command) -> None:
        if self.running is command:
            self.running = None
        if not command.deferred.called:
            if isinstance(result, Failure):
                command.deferred.errback(result)
            else:
                command.deferred.callback(result)
        self._next()

    def clear(self) -> int:
        """Fail every waiting command with QueueCleared; return how many."""
        dropped = list(self._waiting)
        self._waiting.clear()
        for command in dropped:
            command.deferred.errback(
                Failure(QueueCleared(
                    f"command {command.op!r} was cleared from engine {self.engine_id}'s queue"
                ))
            )
        return len(dropped)

    def engine_died(self, reason: str = "") -> None:
        """Fail the running and every waiting command with EngineError."""
        self._dead = EngineError(
            self.engine_id, reason or f"engine {self.engine_id} died"
        )
        running, self.running = self.running, None
        waiting = list(self._waiting)
        self._waiting.clear()
        for command in ([running] if running else []) + waiting:
            if not command.deferred.called:
                command.deferred.errback(Failure(self._dead))

    def status(self) -> dict[str, Any]:
        """Describe the running command and the waiting ones."""
        return {
            "engine_id": self.engine_id,
            "running": self.running.summary() if self.running else None,
            "queued": [c.summary() for c in self._waiting],
        }

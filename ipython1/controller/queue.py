"""EngineQueue: one queue of commands per engine, run one at a time.

Fair between users: each user's commands wait in their own FIFO, and the
engine takes the next command from the user it served least recently (round
robin), so one user's thousand queued commands delay another's by at most one.
Order within one user is kept.

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

from ipython1.common.errors import EngineError, QueueCleared

_command_ids = itertools.count(1)


@dataclass
class Command:
    """One operation for one engine: a method name and its arguments."""

    op: str
    args: tuple[Any, ...] = ()
    client: str = ""
    description: str = ""
    user: str = ""  # whom the command is attributed to (fairness, permissions)
    call: int = 0  # the multi-engine call it is part of (one per engine), for events
    tag: str = ""  # the engine keeps a tagged command's reply (controller/recovered.py)
    id: int = field(default_factory=lambda: next(_command_ids))
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    deferred: Deferred[Any] = field(default_factory=Deferred, repr=False)

    @property
    def owner(self) -> str:
        """Return the name fairness and clear_queue go by."""
        return self.user or user_of(self.client)

    def summary(self) -> dict[str, Any]:
        """Describe the command for queue_status (never its values)."""
        return {
            "id": self.id,
            "op": self.op,
            "client": self.client,
            "user": self.owner,
            "description": self.description,
            "submitted": self.submitted,
            "started": self.started,
        }


def user_of(client: str) -> str:
    """Return the user a session name belongs to ("alice/client-3" -> "alice")."""
    return client.split("/", 1)[0]


class EngineQueue:
    """Run one engine's commands one at a time: round robin between users."""

    def __init__(self, engine_id: int, send: Callable[[Command], Deferred[Any]]) -> None:
        self.engine_id = engine_id
        self._send = send
        self._waiting: dict[str, collections.deque[Command]] = {}
        self._served: dict[str, int] = {}  # user -> tick of their last start
        self._tick = 0
        self._count = 0
        self.running: Command | None = None
        self._dead: EngineError | None = None
        # Commands that must wait for now (a client not reading its replies: see
        # backpressure); their users are skipped until kick().
        self.held: Callable[[Command], bool] | None = None

    def __len__(self) -> int:
        return self._count

    def submit(self, command: Command) -> Deferred[Any]:
        """Queue a command; the Deferred fires with the engine's reply."""
        if self._dead is not None:
            command.deferred.errback(Failure(self._dead))
            return command.deferred
        self._waiting.setdefault(command.owner, collections.deque()).append(command)
        self._count += 1
        self._next()
        return command.deferred

    def _pop(self) -> Command | None:
        # The user served least recently goes next (never served: first).
        held = self.held
        if len(self._waiting) == 1:  # the common case: one user, no choice to make
            user = next(iter(self._waiting))
            if held is not None and held(self._waiting[user][0]):
                return None
        else:
            users = [u for u in self._waiting if held is None or not held(self._waiting[u][0])]
            if not users:
                return None
            user = min(users, key=lambda u: self._served.get(u, -1))
        fifo = self._waiting[user]
        command = fifo.popleft()
        if not fifo:
            del self._waiting[user]
        self._count -= 1
        self._tick += 1
        self._served[user] = self._tick
        return command

    def _next(self) -> None:
        if self.running is not None or not self._waiting or self._dead is not None:
            return
        command = self._pop()
        if command is None:
            return  # everything waiting is held
        self.running = command
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

    def waiting(self) -> list[Command]:
        """Return the waiting commands, user by user, each user's in order."""
        return [c for fifo in self._waiting.values() for c in fifo]

    def kick(self) -> None:
        """Start the next command if the engine is idle (e.g. a held client was released)."""
        self._next()

    def clear(self, user: str | None = None) -> int:
        """Fail waiting commands (all, or one user's) with QueueCleared; return how many."""
        users = list(self._waiting) if user is None else [user]
        dropped: list[Command] = []
        for name in users:
            dropped.extend(self._waiting.pop(name, ()))
        return self._fail_cleared(dropped)

    def clear_client(self, client: str) -> int:
        """Fail the waiting commands of one client (it went away); return how many."""
        dropped: list[Command] = []
        for user in list(self._waiting):
            fifo = self._waiting[user]
            mine = [c for c in fifo if c.client == client]
            if mine:
                dropped.extend(mine)
                rest = collections.deque(c for c in fifo if c.client != client)
                if rest:
                    self._waiting[user] = rest
                else:
                    del self._waiting[user]
        return self._fail_cleared(dropped)

    def _fail_cleared(self, dropped: list[Command]) -> int:
        self._count -= len(dropped)
        for command in dropped:
            command.deferred.errback(
                Failure(QueueCleared(
                    f"command {command.op!r} was cleared from engine {self.engine_id}'s queue"
                ))
            )
        return len(dropped)

    def engine_died(self, reason: str = "", death: dict[str, Any] | None = None) -> None:
        """Fail the running and every waiting command with EngineError."""
        self._dead = EngineError(
            self.engine_id, reason or f"engine {self.engine_id} died", death
        )
        running, self.running = self.running, None
        waiting = self.waiting()
        self._waiting.clear()
        self._count = 0
        for command in ([running] if running else []) + waiting:
            if not command.deferred.called:
                command.deferred.errback(Failure(self._dead))

    def status(self) -> dict[str, Any]:
        """Describe the running command, the waiting ones, and counts per user."""
        return {
            "engine_id": self.engine_id,
            "running": self.running.summary() if self.running else None,
            "queued": [c.summary() for c in self.waiting()],
            "per_user": {u: len(f) for u, f in self._waiting.items()},
        }

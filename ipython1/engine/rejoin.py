"""What an engine keeps while its controller is away, to hand over when it rejoins.

A task batch that finishes after the connection to the controller was lost
cannot be answered on that connection: its replies wait here, and go to the
controller with the engine's next registration (``info["late_tasks"]``), or,
if the engine has rejoined already, at once (``deliver_late``). The
registration also names the tasks still running (``info["running_tasks"]``),
so the restarted controller waits for them instead of running them again.

Pure: no reactor; the shell thread and the reactor thread both call it.
"""

from __future__ import annotations

import threading
from typing import Any

RECONNECT_TIMEOUT = 600.0  # seconds an engine keeps trying to rejoin (ipengine --reconnect-timeout)


class LateReplies:
    """Task replies the controller has not received yet; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0  # one per connection to a controller
        self._lost = False
        self._running: list[Any] = []
        self._late: list[Any] = []

    def started(self, tids: list[Any]) -> int:
        """Note a batch starting; return the connection it belongs to."""
        with self._lock:
            self._running = list(tids)
            return self._generation

    def finished(self, generation: int, replies: list[Any] | None) -> bool:
        """Note a batch's end; keep its replies if their connection is gone.

        Return True when they were kept (the caller then tries deliver_late).
        """
        with self._lock:
            self._running = []
            if replies is None or not (self._lost or generation != self._generation):
                return False
            self._late.extend(replies)
            return True

    def lost(self) -> None:
        with self._lock:
            self._lost = True

    def rejoined(self, handed_over: int) -> None:
        """A new connection: drop the handed_over replies it took with the registration."""
        with self._lock:
            self._generation += 1
            self._lost = False
            del self._late[:handed_over]

    @property
    def connected(self) -> bool:
        return not self._lost

    def registration_info(self) -> dict[str, Any]:
        """What a rejoining engine tells the controller (a copy; see rejoined)."""
        with self._lock:
            return {"late_tasks": list(self._late), "running_tasks": list(self._running)}

    def take(self) -> list[Any]:
        """Take the kept replies, to send them now."""
        with self._lock:
            late, self._late = self._late, []
            return late

    def put_back(self, replies: list[Any]) -> None:
        """Keep replies that could not be sent after all."""
        with self._lock:
            self._late[:0] = replies

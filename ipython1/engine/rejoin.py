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
MAX_NOTES = 100  # commands finished while away that a rejoining engine reports, at most


class LateReplies:
    """Task replies the controller has not received yet; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0  # one per connection to a controller
        self._lost = False
        self._running: list[Any] = []
        self._late: list[Any] = []
        self._notes: list[dict[str, Any]] = []  # other commands that finished while away

    @property
    def generation(self) -> int:
        return self._generation

    def lost_since(self, generation: int) -> bool:
        """Tell whether the connection of generation is gone (read without the lock:
        a command checks it once as it ends)."""
        return self._lost or generation != self._generation

    def note(self, op: str, reply: Any) -> bool:
        """Remember that a command finished with nobody to answer (its reply stays
        in the engine's history: execution records by number). Return True if the
        engine has rejoined meanwhile (the caller then tries deliver_late)."""
        note: dict[str, Any] = {"op": op}
        value = reply.get("value") if isinstance(reply, dict) else None
        if isinstance(value, dict) and "execution_count" in value:
            note["execution_count"] = value["execution_count"]
        if isinstance(reply, dict) and reply.get("status") == "error":
            note["error"] = str((reply.get("error") or {}).get("ename", "error"))
        with self._lock:
            self._notes = (self._notes + [note])[-MAX_NOTES:]
            return not self._lost

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
            self._notes = []

    @property
    def connected(self) -> bool:
        return not self._lost

    def registration_info(self) -> dict[str, Any]:
        """What a rejoining engine tells the controller (a copy; see rejoined)."""
        with self._lock:
            return {"late_tasks": list(self._late), "running_tasks": list(self._running),
                    "finished_while_away": list(self._notes)}

    def take(self) -> dict[str, list[Any]]:
        """Take the kept task replies and notes, to send them now (deliver_late)."""
        with self._lock:
            late = {"tasks": self._late, "finished": self._notes}
            self._late, self._notes = [], []
            return late

    def put_back(self, late: dict[str, list[Any]]) -> None:
        """Keep what could not be sent after all."""
        with self._lock:
            self._late[:0] = late["tasks"]
            self._notes[:0] = late["finished"]

"""What an engine keeps while its controller is away, to hand over when it rejoins.

A task batch that finishes after the connection to the controller was lost
cannot be answered on that connection: its replies wait here, and go to the
controller with the engine's next registration (``info["late_tasks"]``), or,
if the engine has rejoined already, at once (``deliver_late``). The
registration also names the tasks still running (``info["running_tasks"]``),
so the restarted controller waits for them instead of running them again, and
those it finished lately (``info["done_tasks"]``, with the replies of its last
batches in ``info["recent_tasks"]``): a reply the old controller received but
had not journaled yet is not lost, and a task that ran is never taken for
one that did not.

A multi-engine command comes with a tag (``controller/recovered.py``): the
engine keeps the replies of its last tagged commands, delivered or not,
within a bound, and names them (``info["kept_results"]``) and the one it is
running (``info["running_command"]``) when it rejoins; the restarted
controller fetches a reply by its tag (``kept_reply``) when the client that
sent the command asks for its result. A reply is kept as the msgpack bytes the
engine sent (its size is their length): encoded once, never walked again.

Pure: no reactor; the shell thread and the reactor thread both call it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any

RECONNECT_TIMEOUT = 600.0  # seconds an engine keeps trying to rejoin (ipengine --reconnect-timeout)
MAX_NOTES = 100  # commands finished while away that a rejoining engine reports, at most
MAX_TAG = 200  # characters of a command's tag
DONE_TASKS = 4096  # ids of the last tasks finished, named when the engine rejoins
RECENT_BATCHES = 2  # task batches whose delivered replies are handed over again
MAX_RECENT_BYTES = 16 * 2**20
MAX_KEPT = 256  # replies of tagged commands kept for a restarted controller, at most
MAX_KEPT_BYTES = 32 * 2**20  # and their bytes; a larger reply is kept as "too large"


def reply_size(value: Any) -> int:
    """Count the bytes of the str and bytes inside a reply (roughly what it holds)."""
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, dict):
        return sum(reply_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(reply_size(v) for v in value)
    return 8


class LateReplies:
    """Task replies the controller has not received yet; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0  # one per connection to a controller
        self._lost = False
        self._running: list[Any] = []
        self._late: list[Any] = []
        self._notes: list[dict[str, Any]] = []  # other commands that finished while away
        # tag -> (reply, its size); reply None: too large
        self._kept: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._kept_bytes = 0
        self._kept_late: list[str] = []  # tags finished while away, not reported yet
        self._running_tag: str | None = None
        self._done_tids: deque[Any] = deque(maxlen=DONE_TASKS)
        self._recent: deque[list[Any]] = deque(maxlen=RECENT_BATCHES)  # delivered replies

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

    def command_started(self, tag: str | None) -> int:
        """Note a tagged command starting; return the connection it belongs to."""
        with self._lock:
            self._running_tag = tag
            return self._generation

    def command_finished(self, generation: int, tag: str, reply: Any) -> bool:
        """Keep a tagged command's reply (its encoded bytes, or plain data; the
        oldest go past the bounds). Return True if it ended while away and the
        engine has rejoined meanwhile (the caller then tries deliver_late)."""
        size = len(reply) if isinstance(reply, bytes) else reply_size(reply)
        if size > MAX_KEPT_BYTES // 4:
            reply, size = None, 0
        with self._lock:
            self._running_tag = None
            _, old_size = self._kept.pop(tag, (None, 0))
            self._kept[tag] = (reply, size)
            self._kept_bytes += size - old_size
            while len(self._kept) > MAX_KEPT or self._kept_bytes > MAX_KEPT_BYTES:
                self._kept_bytes -= self._kept.popitem(last=False)[1][1]
            if not (self._lost or generation != self._generation):
                return False
            self._kept_late.append(tag)
            return not self._lost

    def kept_reply(self, tag: str) -> tuple[bool, Any]:
        """Return (kept?, reply): a kept reply is None if it was too large to keep."""
        with self._lock:
            kept = self._kept.get(tag)
            return kept is not None, kept[0] if kept is not None else None

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
            self._done_tids.extend(self._running)
            self._running = []
            if replies is None:
                return False
            if not (self._lost or generation != self._generation):
                if reply_size(replies) <= MAX_RECENT_BYTES // RECENT_BATCHES:
                    self._recent.append(replies)  # delivered, but maybe not journaled
                return False
            self._late.extend(replies)
            return True

    def lost(self) -> None:
        with self._lock:
            self._lost = True

    def rejoined(self, handed_over: int, reported: list[str] | None = None) -> None:
        """A new connection: drop the handed_over replies it took with the registration
        (and the reported tags: it knows them)."""
        with self._lock:
            self._generation += 1
            self._lost = False
            del self._late[:handed_over]
            self._recent.clear()
            self._notes = []
            known = set(reported or ())
            self._kept_late = [t for t in self._kept_late if t not in known]

    @property
    def connected(self) -> bool:
        return not self._lost

    def registration_info(self) -> dict[str, Any]:
        """What a rejoining engine tells the controller (a copy; see rejoined)."""
        with self._lock:
            return {"late_tasks": list(self._late), "running_tasks": list(self._running),
                    "recent_tasks": [r for batch in self._recent for r in batch],
                    "done_tasks": list(self._done_tids),
                    "finished_while_away": list(self._notes),
                    "kept_results": list(self._kept), "running_command": self._running_tag}

    def take(self) -> dict[str, list[Any]]:
        """Take the kept task replies and notes, to send them now (deliver_late)."""
        with self._lock:
            late = {"tasks": self._late, "finished": self._notes, "results": self._kept_late}
            self._late, self._notes, self._kept_late = [], [], []
            return late

    def put_back(self, late: dict[str, list[Any]]) -> None:
        """Keep what could not be sent after all."""
        with self._lock:
            self._late[:0] = late["tasks"]
            self._notes[:0] = late["finished"]
            self._kept_late[:0] = late.get("results", [])

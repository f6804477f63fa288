"""The session log: what the controller ran (the controller's half of saved sessions).

``SessionLog`` (pure) records each command that can change an engine's
state: execute, push, scatter, reset, apply; with its targets, the issuing
client, its time and, once the replies are in, its status. Pushed values are
kept as frames (never unpickled by the controller) within bounds. The
client writes a log as a script and reads it back: ipython1.client.sessionfile
(``to_script``, ``parse_script``, ``load_value`` are re-exported here).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ipython1.common.replies import decode as decode_reply

MAX_ENTRIES = 10_000  # commands kept in a controller's session log
MAX_VALUE_BYTES = 1_000_000  # pushed values larger than this are not kept
MAX_TOTAL_VALUE_BYTES = 64_000_000  # pushed values kept in the whole log



def _frames_size(frames: list[bytes]) -> int:
    return sum(len(f) for f in frames)


class SessionLog:
    """A bounded record of the commands a controller ran."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self.entries: deque[dict[str, Any]] = deque()
        self._value_bytes = 0

    def record(self, op: str, targets: Any, client: str, **details: Any) -> dict[str, Any]:
        """Add a command; return its entry (finish() fills in the status)."""
        entry: dict[str, Any] = {
            "id": next(self._ids), "op": op, "targets": _plain_targets(targets),
            "client": client, "time": self._clock(), "status": "pending", "errors": [],
        }
        if "values" in details:  # push: {engine_id or "all": {name: frames}}
            values = details.pop("values")
            size = sum(_frames_size(fr) for ns in values.values() for fr in ns.values())
            entry["names"] = sorted({k for ns in values.values() for k in ns})
            if size <= MAX_VALUE_BYTES and self._value_bytes + size <= MAX_TOTAL_VALUE_BYTES:
                entry["values"] = {str(k): v for k, v in values.items()}
                self._value_bytes += size
            else:
                entry["values"] = None
        entry.update(details)
        self.entries.append(entry)
        while len(self.entries) > MAX_ENTRIES:
            old = self.entries.popleft()
            if old.get("values"):
                self._value_bytes -= sum(_frames_size(fr) for ns in old["values"].values()
                                         for fr in ns.values())
        return entry

    def finish(self, replies: Any, entry: dict[str, Any]) -> Any:
        """Set an entry's status from its replies; pass the replies on."""
        errors = []
        for reply in replies if isinstance(replies, list) else []:
            reply = decode_reply(reply)
            if isinstance(reply, dict) and reply.get("status") == "error":
                err = reply.get("error") or {}
                errors.append(f"{err.get('ename', 'Error')} on engine {reply.get('engine_id')}")
        entry["status"] = "error" if errors else "ok"
        entry["errors"] = errors
        return replies

    def snapshot(self) -> list[dict[str, Any]]:
        """Return the entries as plain data (for the wire)."""
        return [dict(e) for e in self.entries]


def _plain_targets(targets: Any) -> Any:
    if isinstance(targets, (list, tuple)):
        return [int(t) for t in targets]
    return targets if targets is not None else "all"


def __getattr__(name: str) -> Any:
    """Re-export the client half from its own module, imported only when asked for."""
    if name in ("load_value", "to_script", "parse_script"):
        from ipython1.client import sessionfile

        return getattr(sessionfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""LogRing: the last lines of a process's own log, kept in memory for ``logs()``.

An engine on another host writes its log where nobody else can read it; the
ring lets ``mec.logs(engine)`` and ``ipcluster logs --engine N`` show it over
the wire. It is a Twisted log observer, so it sees exactly what the log file
gets, formatted the same way.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from twisted.logger import formatEventAsClassicLogText

MAX_LINE = 4000  # characters kept of one log line


class LogRing:
    """Keep the last `size` formatted log lines (thread-safe)."""

    def __init__(self, size: int = 2000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEventAsClassicLogText(event)
        if not text:
            return
        with self._lock:
            for line in text.rstrip("\n").split("\n"):
                self._lines.append(line[:MAX_LINE])

    def tail(self, lines: int) -> list[str]:
        """Return the last `lines` lines, oldest first."""
        with self._lock:
            if lines <= 0:
                return []
            return list(self._lines)[-lines:]

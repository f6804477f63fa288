"""Live output on the client: the subscription's receiving end and the line printer."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from foolscap.api import Referenceable


class OutputObserver(Referenceable):  # type: ignore[misc]
    """The client's end of a subscription: calls callback(engine_id, name, text)."""

    def __init__(self, callback: Callable[[int, str, str], None]) -> None:
        self.callback = callback

    def remote_output(self, event: dict[str, Any]) -> None:
        engine_id = event.get("engine_id")
        for name, text in event.get("chunks", []):
            self.callback(engine_id, name, text)


class StreamPrinter:
    """Print live output line by line as ``[stdout:3] text``.

    A line is printed when its newline arrives (or on ``flush``); within a
    line, a carriage return discards what came before it, as a terminal
    shows a progress bar's final state.
    """

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out
        self._partial: dict[tuple[int, str], str] = {}
        self._lock = threading.Lock()

    @property
    def out(self) -> IO[str]:
        return self._out if self._out is not None else sys.stdout

    def __call__(self, engine_id: int, name: str, text: str) -> None:
        with self._lock:
            key = (engine_id, name)
            buffer = self._partial.pop(key, "") + text
            *lines, rest = buffer.split("\n")
            for line in lines:
                self._emit(engine_id, name, line)
            if rest:
                self._partial[key] = rest
            self.out.flush()

    def flush(self) -> None:
        """Print every unfinished line."""
        with self._lock:
            partial, self._partial = self._partial, {}
            for (engine_id, name), rest in sorted(partial.items()):
                self._emit(engine_id, name, rest)
            self.out.flush()

    def _emit(self, engine_id: int, name: str, line: str) -> None:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
        self.out.write(f"[{name}:{engine_id}] {line}\n")

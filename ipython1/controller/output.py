"""Live output on the controller: the receiving end the controller hands each engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable

Chunk = list  # [stream name, text]


class OutputReceiver(Referenceable):  # type: ignore[misc]
    """The controller's end of one engine's output stream."""

    def __init__(self, engine_id: int, deliver: Callable[[int, list[Chunk]], Any],
                 on_debugger: Callable[[int, str], bool] | None = None) -> None:
        self.engine_id = engine_id
        self._deliver = deliver
        self._on_debugger = on_debugger

    def remote_output(self, chunks: list[Chunk]) -> Any:
        clean = [[str(name), str(text)] for name, text in chunks
                 if name in ("stdout", "stderr") and isinstance(text, str)]
        return self._deliver(self.engine_id, clean) if clean else None

    def remote_debugger(self, text: str) -> bool:
        """The engine's pdb waits for a line: hand its prompt to a client; False if none."""
        if self._on_debugger is None or not isinstance(text, str):
            return False
        return self._on_debugger(self.engine_id, text[:1 << 20])

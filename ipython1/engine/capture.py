"""Output capture: a command's stdout and stderr, kept and forwarded as written."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any


class OutputStream(io.TextIOBase):
    """A text stream that keeps what is written and forwards it as it comes."""

    def __init__(self, name: str, sink: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self._sink = sink
        self._parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._parts.append(text)
            if self._sink is not None:
                self._sink(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def take(self) -> str:
        """Return what was written since the last take, and forget it."""
        text, self._parts = "".join(self._parts), []
        return text


class _Capture:
    """Point sys.stdout/stderr at a command's streams while it runs."""

    def __init__(self, stdout: OutputStream, stderr: OutputStream) -> None:
        self.streams = stdout, stderr

    def __enter__(self) -> None:
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.streams

    def __exit__(self, *exc: Any) -> None:
        sys.stdout, sys.stderr = self.saved

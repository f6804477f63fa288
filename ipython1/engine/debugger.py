"""Remote pdb: a debugger on the engine's shell thread, driven line by line by a client.

``EngineDebugger`` runs pdb where user code runs (the shell thread): post mortem
on the last exception (``mec.debug(engine)``, ``%debug --engine N``) or at a
``breakpoint()`` in engine code. pdb's input and output go through a
``DebugPipe`` instead of a terminal:

- when pdb wants a line, the pipe hands what pdb printed since the last line to
  ``on_prompt(text)`` (called on the shell thread) and waits for ``feed(line)``;
- when pdb is done, ``on_end(text)`` gets its last words.

The engine relays both to the controller, which hands the prompt to the client
whose command is running (a command's client owns its debugger). Meanwhile the
engine's queue waits, as it does for any running command; the reactor thread
keeps answering, so interrupt and kill work: an interrupt quits the debugger.
"""

from __future__ import annotations

import bdb
import io
import pdb
import queue
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

MAX_OUTPUT = 1 << 20  # characters of debugger output held between two prompts


class DebuggerQuit(bdb.BdbQuit):
    """The client (or an interrupt) ended the debugging session."""


class DebugPipe(io.TextIOBase):
    """pdb's stdin and stdout: lines come from feed(), text goes to on_prompt()."""

    def __init__(self, on_prompt: Callable[[str], None]) -> None:
        super().__init__()
        self._on_prompt = on_prompt
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._out: list[str] = []
        self._size = 0
        self.waiting = False

    # -- pdb's side (shell thread) --

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._size < MAX_OUTPUT:
            self._out.append(text[:MAX_OUTPUT - self._size])
            self._size += len(self._out[-1])
        return len(text)

    def flush(self) -> None:
        pass

    def take(self) -> str:
        """Return and forget what pdb printed since the last take()."""
        text, self._out, self._size = "".join(self._out), [], 0
        return text

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        self.waiting = True
        self._on_prompt(self.take())
        try:
            line = self._lines.get()
        except KeyboardInterrupt:  # an interrupt while pdb waits for a line
            line = None
        finally:
            self.waiting = False
        if line is None:
            raise DebuggerQuit("the debugger was interrupted")
        return line if line.endswith("\n") else line + "\n"

    # -- the client's side (any thread) --

    def feed(self, line: str | None) -> None:
        """Give pdb its next line; None quits the debugger."""
        self._lines.put(line)


class EngineDebugger(pdb.Pdb):
    """pdb on a DebugPipe; prompts carry the engine id; says when it lets go."""

    def __init__(self, pipe: DebugPipe, engine_id: int | None,
                 on_release: Callable[[], None]) -> None:
        super().__init__(stdin=pipe, stdout=pipe, nosigint=True, readrc=False)
        self.use_rawinput = False
        self.prompt = f"(Pdb {engine_id}) " if engine_id is not None else "(Pdb) "
        self._on_release = on_release

    def set_continue(self) -> None:
        super().set_continue()
        if not self.breaks:  # the code runs on untraced: the session is over
            self._on_release()

    def set_quit(self) -> None:
        super().set_quit()
        self._on_release()


class DebugSession:
    """One debugger run on the shell thread; the client talks to it through feed()."""

    def __init__(self, engine_id: int | None, on_prompt: Callable[[str], None],
                 on_end: Callable[[str], None]) -> None:
        self.pipe = DebugPipe(on_prompt)
        self.debugger = EngineDebugger(self.pipe, engine_id, self.end)
        self._on_end = on_end
        self._lock = threading.Lock()
        self.active = False

    def post_mortem(self, tb: TracebackType) -> str:
        """Debug a finished exception's traceback; return how it ended."""
        self.active = True
        try:
            self.debugger.reset()
            self.debugger.interaction(None, tb)
            return "quit"
        except bdb.BdbQuit as e:
            return str(e) or "quit"
        finally:
            self.end()

    def set_trace(self, frame: FrameType) -> None:
        """Stop in frame (breakpoint()); the code goes on when the client continues."""
        self.active = True
        self.debugger.set_trace(frame)

    def end(self) -> None:
        """Stop tracing and hand the client pdb's last words (once)."""
        with self._lock:
            if not self.active:
                return
            self.active = False
        self._on_end(self.pipe.take())

    def feed(self, line: str | None) -> None:
        self.pipe.feed(line)

    @property
    def waiting(self) -> bool:
        return self.pipe.waiting

"""The engine's kernel: an IPython shell driven by the op table, on the shell thread only.

``EngineKernel.dispatch`` runs any op of `ipython1.common.ops` (both
transports call it); each op is a method of the same name. The rest of the
engine: `shell` (the IPython shell it drives), `capture` (stdout/stderr),
`runner` (the shell thread), `watchdog` (task timeouts), `service` (what the
controller calls; registration).
"""

from __future__ import annotations

import collections
import importlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from ipython1.common import ops
from ipython1.common.errors import KernelError, TaskTimeout, error_to_wire
from ipython1.common.interfaces import IEngineKernel
from ipython1.common.serialize import deserialize, serialize
from ipython1.engine import blobs, introspection
from ipython1.engine.capture import OutputStream, _Capture
from ipython1.engine.debugger import DebugSession
from ipython1.engine.shell import take_shell
from ipython1.engine.watchdog import TaskWatchdog
from ipython1.transport.data import refs

if TYPE_CHECKING:
    from ipython1.engine.runner import ShellRunner

MAX_HISTORY = 1000  # execution records kept per engine; older ones are dropped

# Large values received or to be sent over the data channel, by blob id.
BLOBS = blobs.BlobStore()


def _incoming(frames: list[bytes]) -> list[Any]:
    """Return the frames of a value, fetching a blob reference from BLOBS."""
    ref = refs.parse_blob_ref(frames)
    return frames if ref is None else BLOBS.take(ref[0])


def _outgoing(value: Any) -> list[bytes]:
    """Serialize a value to reply; keep a large one in BLOBS for the data channel.

    A large value is lent, not copied: its buffers go out from the user's
    memory, and BLOBS.settle() before the next command keeps them unchanged
    until sent. Each buffer stays one frame, so the client rebuilds arrays in
    the memory it receives them in.
    """
    frames = serialize(value, max_frame=None, copy=False)
    if not refs.is_large(frames):
        return [bytes(f) for f in frames]
    blob_id = refs.new_blob_id()
    BLOBS.put(blob_id, frames, lent=True)
    return refs.blob_ref(blob_id, [len(f) for f in frames])


@implementer(IEngineKernel)
class EngineKernel:
    """An IPython shell driven by execute/push/pull/apply; shell thread only."""

    def __init__(self, on_output: Callable[[str, str], None] | None = None,
                 runner: ShellRunner | None = None) -> None:
        self.engine_id: int | None = None
        self.stdout = OutputStream("stdout", on_output)
        self.stderr = OutputStream("stderr", on_output)
        self._recorder, self.shell = take_shell()
        self._runner = runner
        self._watchdog: TaskWatchdog | None = None  # made with the first batch of tasks
        if runner is not None:
            runner.guard_cells(self.shell)
        self.history: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        # Remote pdb: made by the engine's network side, which relays prompts and lines.
        self.debug_session_factory: Callable[[bool], DebugSession] | None = None
        self.debugging: DebugSession | None = None
        self.last_error: BaseException | None = None  # what debug() examines
        sys.breakpointhook = self._breakpoint

    def _capturing(self) -> _Capture:
        return _Capture(self.stdout, self.stderr)

    def dispatch(self, name: str, args: list[Any]) -> Any:
        """Run one command of the op table (ipython1.common.ops); both transports call this."""
        method = ops.checked(name, args)
        try:
            return getattr(self, method)(*args)
        finally:
            if self.debugging is not None:  # stepped off the end of the command
                sys.settrace(None)
                self.debugging.end()
                self.debugging = None

    def debug(self) -> str:
        """Run pdb post mortem on this engine's last exception; the client drives it."""
        error = self.last_error
        if error is None or error.__traceback__ is None:
            raise KernelError(f"engine {self.engine_id} has no exception to debug: "
                              "run the code that fails first")
        if self.debug_session_factory is None:
            raise KernelError(f"engine {self.engine_id} cannot run a remote debugger")
        self.debugging = self.debug_session_factory(False)
        return self.debugging.post_mortem(error.__traceback__)

    def _breakpoint(self, *args: Any, **kwargs: Any) -> None:
        """breakpoint() in engine code: pause here and hand the prompt to the client."""
        if self.debug_session_factory is None or (
                self._runner is not None and self._runner.thread_ident != threading.get_ident()):
            return  # not on the shell thread (a user's own thread): nobody to drive it
        self.debugging = self.debug_session_factory(True)
        self.debugging.set_trace(sys._getframe(1))

    def execute(self, code: str) -> dict[str, Any]:
        """Run a cell; return its record, or raise _CellFailed with it."""
        self._recorder.current = record = {
            "engine_id": self.engine_id,
            "input": code,
            "outputs": [],
            "result": None,
        }
        self.stdout.take(), self.stderr.take()
        with self._capturing():
            if self._runner is not None:
                self._runner.in_cell = True  # until user code starts, interrupts wait
            try:
                result = self.shell.run_cell(code, store_history=True)
            finally:
                # Nothing writes IPython's in-memory history database out: its
                # write-behind caches would only grow (In/Out are kept apart).
                history = self.shell.history_manager
                history.db_input_cache.clear()
                history.db_output_cache.clear()
                if self._runner is not None:
                    self._runner.in_cell = False
        record["execution_count"] = result.execution_count
        record["stdout"] = self.stdout.take()
        record["stderr"] = self.stderr.take()
        if record["result"] is not None:
            try:
                record["result"]["frames"] = serialize(result.result)
            except KernelError:
                record["result"]["frames"] = None  # repr only; the value stays remote
        error = result.error_in_exec or result.error_before_exec
        if error is not None:
            self.last_error = error
            record["error"] = {
                "kind": "remote",
                "engine_id": self.engine_id,
                "ename": type(error).__name__,
                "evalue": str(error),
                "traceback": record.pop("traceback", "") or _format_exception(error),
                "execution_count": result.execution_count,
            }
        self._remember(record)
        if error is not None:
            raise _CellFailed(record)
        return _wire_record(record)

    def _remember(self, record: dict[str, Any]) -> None:
        count = record.get("execution_count")
        if count is None:
            return
        self.history[count] = record
        while len(self.history) > MAX_HISTORY:
            self.history.popitem(last=False)

    def push(self, namespace: dict[str, list[bytes]]) -> None:
        values = {key: deserialize(_incoming(frames)) for key, frames in namespace.items()}
        self.shell.user_ns.update(values)

    def pull(self, keys: list[str]) -> list[list[bytes]]:
        ns = self.shell.user_ns
        missing = [k for k in keys if k not in ns]
        if missing:
            raise NameError(f"name {missing[0]!r} is not defined")
        out = []
        for key in keys:
            try:
                out.append(_outgoing(ns[key]))
            except KernelError as e:
                raise type(e)(f"cannot pull {key!r}: {e}") from None
        return out

    def apply(self, func: list[bytes], args: list[bytes]) -> list[bytes]:
        f = deserialize(_incoming(func))
        call_args, call_kwargs = deserialize(_incoming(args))
        with self._capturing():
            try:
                value = f(*call_args, **call_kwargs)
            except BaseException as e:
                self.last_error = e
                raise
        self.stdout.take(), self.stderr.take()
        return _outgoing(value)

    def get_result(self, n: int | None) -> dict[str, Any]:
        if not self.history:
            raise IndexError("no command has run on this engine yet")
        if n is None:
            return next(reversed(self.history.values()))
        if n not in self.history:
            kept = f"{min(self.history)}..{max(self.history)}"
            raise IndexError(f"no result for execution number {n} (kept: {kept})")
        return self.history[n]

    def keys(self) -> list[str]:
        hidden = self.shell.user_ns_hidden
        return sorted(
            k for k in self.shell.user_ns if not k.startswith("_") and k not in hidden
        )

    def reset(self) -> None:
        self.shell.reset(new_session=False)
        self.history.clear()

    def input_history(self, start: int | None, stop: int | None) -> list[list[Any]]:
        return introspection.history(self.shell, start, stop)

    def inspect(self, name: str, detail_level: int) -> dict[str, Any]:
        return introspection.inspect(self.shell, name, detail_level)

    def who(self) -> list[str]:
        return introspection.who(self.shell)

    def whos(self) -> dict[str, Any]:
        return introspection.whos(self.shell)

    def complete(self, text: str, line: str | None, cursor_pos: int | None) -> dict[str, Any]:
        return introspection.complete(self.shell, text, line, cursor_pos)

    def ping(self) -> dict[str, Any]:
        """Answer through the queue: the engine's pid and clock (time.time())."""
        return {"pid": os.getpid(), "time": time.time()}

    # -- the task farm --

    def run_tasks(self, batch: list[list[Any]],
                  watchdog: TaskWatchdog | None = None) -> list[list[Any]]:
        """Run a batch of task-farm tasks ``[tid, timeout, payload]`` in order.

        Each reply is ``[tid, status, duration, data]``: status "ok" with the
        frames of ``(kind, value, stdout, stderr)``, "unmet" with the reason the
        task's depend function gave, or "error" with ``{"error", "stdout", "stderr"}``.
        """
        if watchdog is None and self._runner is not None:
            if self._watchdog is None:
                self._watchdog = TaskWatchdog(self._runner)
            watchdog = self._watchdog
        return [self.run_task(tid, timeout, payload, watchdog)
                for tid, timeout, payload in batch]

    def run_task(self, tid: Any, timeout: float | None, payload: list[bytes],
                 watchdog: TaskWatchdog | None = None) -> list[Any]:
        """Run one task; never raise for the user's errors."""
        timed_out: Any = False
        start = time.perf_counter()
        self.stdout.take(), self.stderr.take()
        watched = watchdog is not None and timeout is not None
        if watched:
            watchdog.start(tid, float(timeout))
        spec: dict[str, Any] = {}
        try:
            try:
                spec = deserialize(payload)
                if spec.get("depend") is not None:
                    reason = self._unmet(spec["depend"])
                    if reason:
                        return [tid, "unmet", time.perf_counter() - start, reason]
                if spec.get("clear_before"):
                    self.shell.reset(new_session=False)
                if spec["kind"] == "string":
                    value: Any = self._run_string_task(spec)
                else:
                    with self._capturing():
                        value = spec["func"](*spec.get("args", ()), **spec.get("kwargs", {}))
            finally:
                timed_out = watched and watchdog.finish(tid)
                if spec.get("clear_after"):  # failed or not, as in IPython 0.10
                    self.shell.reset(new_session=False)
            frames = serialize((spec["kind"], value, self.stdout.take(), self.stderr.take()))
            return [tid, "ok", time.perf_counter() - start, frames]
        except BaseException as e:  # noqa: B036 - user code may raise anything
            if watched:
                timed_out = watchdog.finish(tid) or timed_out
            if isinstance(e, SystemExit):
                e = RuntimeError(f"user code called exit({e.code!r}); the engine keeps running")
            if timed_out:
                e = TaskTimeout(f"task {tid} ran longer than its timeout of {timeout:g} s "
                                f"on engine {self.engine_id} (interrupted)")
            error = _error_reply(self.engine_id, e)["error"]
            return [tid, "error", time.perf_counter() - start,
                    {"error": error, "stdout": self.stdout.take(), "stderr": self.stderr.take()}]

    def _unmet(self, depend: Any) -> str:
        """Evaluate a depend function here; return why it is unmet, or ''."""
        try:
            f, args = depend
            with self._capturing():
                ok = f(*args)
        except Exception as e:
            return f"depend raised {type(e).__name__}: {e}"
        return "" if ok else "depend returned False"

    def _run_string_task(self, spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("push"):
            self.shell.user_ns.update(spec["push"])
        self._recorder.current = record = {"engine_id": self.engine_id, "outputs": [],
                                           "result": None}
        with self._capturing():
            result = self.shell.run_cell(spec["code"], store_history=False, silent=True)
        error = result.error_in_exec or result.error_before_exec
        if error is not None:
            record["error"] = {
                "kind": "remote", "engine_id": self.engine_id,
                "ename": type(error).__name__, "evalue": str(error),
                "traceback": record.pop("traceback", "") or _format_exception(error),
            }
            raise _CellFailed(record)
        ns = self.shell.user_ns
        missing = [k for k in spec.get("pull") or [] if k not in ns]
        if missing:
            raise NameError(f"name {missing[0]!r} is not defined (pull)")
        return {k: ns[k] for k in spec.get("pull") or []}


def _wire_record(record: dict[str, Any]) -> dict[str, Any]:
    """Return what the reply needs of an execution record.

    The client knows the input and the reply names the engine; empty fields
    are left out. Every token saved is work saved on the engine, the
    controller and the client, once per engine per command.
    """
    return {k: v for k, v in record.items()
            if k not in ("input", "engine_id") and v not in (None, "", [])}


class _CellFailed(Exception):
    """A cell raised; carries the full record so stdout is not lost."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record


def _format_exception(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _error_reply(engine_id: int | None, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, _CellFailed):
        error = dict(exc.record["error"])
        error["record"] = {k: v for k, v in exc.record.items() if k != "error"}
        return {"engine_id": engine_id, "status": "error", "error": error}
    error = error_to_wire(exc, engine_id)
    if error["kind"] == "remote" and not error["traceback"]:
        error["traceback"] = _format_exception(exc)
    return {"engine_id": engine_id, "status": "error", "error": error}


# What this module held before the engine was split (its old name is ipython1.kernel.engine).
_MOVED_OUT = {
    "OutputStream": "capture", "StaticTransformCache": "shell", "TaskWatchdog": "watchdog",
    "ShellRunner": "runner", "RESEND_INTERRUPT": "runner", "EngineReferenceable": "service",
    "EngineService": "service", "engine_info": "service", "LOG_RING": "service",
    "UNREACHABLE_REPORT_AFTER": "service", "UNREACHABLE_REPORT_EVERY": "service",
}


def __getattr__(name: str) -> Any:
    """Re-export what moved to the engine's other modules, imported only when asked for."""
    if name in _MOVED_OUT:
        return getattr(importlib.import_module(f"ipython1.engine.{_MOVED_OUT[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

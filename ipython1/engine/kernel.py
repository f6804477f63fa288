"""The engine: an IPython shell on its own thread, exposed to the controller.

User code never runs on the reactor thread. ``ShellRunner`` runs jobs one at
a time on the *shell thread* (the main thread under ``ipengine``, so that
SIGINT can interrupt even a blocking C call), while the reactor thread keeps
answering the controller: pings, interrupts and kills are never queued behind
a running cell.
"""

from __future__ import annotations

import collections
import ctypes
import io
import keyword
import os
import queue
import re
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import psutil
from foolscap.api import Referenceable
from twisted.application import service
from twisted.internet import defer, reactor, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogPublisher
from zope.interface import implementer

from ipython1 import __version__
from ipython1.common import addresses, localhost, ops, replies, wire
from ipython1.common.errors import KernelError, TaskTimeout, VersionMismatch, error_to_wire
from ipython1.common.interfaces import IEngineKernel, RIEngine
from ipython1.common.logring import LogRing
from ipython1.common.serialize import deserialize, serialize
from ipython1.common.versions import local_versions, refusal
from ipython1.engine import introspection
from ipython1.engine.debugger import DebugSession
from ipython1.engine.output import OutputBatcher
from ipython1.engine.rejoin import MAX_TAG, RECONNECT_TIMEOUT, LateReplies
from ipython1.engine.restart import exec_fresh
from ipython1.kernel import datachannel
from ipython1.transport import channel as command_channel
from ipython1.transport import foolscap as foolscap_transport

log = Logger()

MAX_HISTORY = 1000  # execution records kept per engine; older ones are dropped
RESEND_INTERRUPT = 0.05  # seconds before re-sending a SIGINT that woke nothing

# Large values received or to be sent over the data channel, by blob id.
BLOBS = datachannel.BlobStore()

# This process's recent log lines, for logs() over the wire (engines on other hosts).
LOG_RING = LogRing()


def _incoming(frames: list[bytes]) -> list[Any]:
    """Return the frames of a value, fetching a blob reference from BLOBS."""
    ref = datachannel.parse_blob_ref(frames)
    return frames if ref is None else BLOBS.take(ref[0])


def _outgoing(value: Any) -> list[bytes]:
    """Serialize a value to reply; keep a large one in BLOBS for the data channel.

    A large value is lent, not copied: its buffers go out from the user's
    memory, and BLOBS.settle() before the next command keeps them unchanged
    until sent. Each buffer stays one frame, so the client rebuilds arrays in
    the memory it receives them in.
    """
    frames = serialize(value, max_frame=None, copy=False)
    if not datachannel.is_large(frames):
        return [bytes(f) for f in frames]
    blob_id = datachannel.new_blob_id()
    BLOBS.put(blob_id, frames, lent=True)
    return datachannel.blob_ref(blob_id, [len(f) for f in frames])


# -- output capture ----------------------------------------------------------


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


# -- the IPython kernel --------------------------------------------------------


def _make_shell(recorder: _Recorder) -> Any:
    """Build an InteractiveShell whose output is captured, not printed."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class CapturingDisplayHook(DisplayHook):  # type: ignore[misc]
        """Keep Out[n]'s format data instead of printing 'Out[n]: ...'."""

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: dict[str, Any], md_dict: Any = None) -> None:
            recorder.current["result"] = {"data": _plain(format_dict),
                                          "metadata": _plain(md_dict or {})}

        def finish_displayhook(self) -> None:
            pass

    class CapturingDisplayPublisher(DisplayPublisher):  # type: ignore[misc]
        """Keep display() calls as outputs of the running command."""

        def publish(self, data: dict[str, Any], metadata: Any = None, *args: Any,
                    **kw: Any) -> None:
            recorder.current.setdefault("outputs", []).append(
                {"data": _plain(data), "metadata": _plain(metadata or {})}
            )

        def clear_output(self, wait: bool = False) -> None:
            recorder.current["outputs"] = []

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "nocolor"
    config.InteractiveShell.xmode = "Context"
    config.IPCompleter.use_jedi = False  # complete on live objects, fast and predictable
    InteractiveShell.displayhook_class = CapturingDisplayHook
    InteractiveShell.display_pub_class = CapturingDisplayPublisher
    shell = InteractiveShell.instance(config=config)
    # The config applies only if this made the instance (a test process may hold one).
    shell.Completer.use_jedi = False

    def showtraceback(etype: Any, evalue: Any, stb: list[str]) -> None:
        recorder.current["traceback"] = shell.InteractiveTB.stb2text(stb)

    shell._showtraceback = showtraceback
    manager = shell.input_transformer_manager
    manager.transform_cell = StaticTransformCache(manager)
    shell.should_run_async = _cached_async_check(shell)
    shell.prefilter_manager.prefilter_lines = _keyword_lines_unfiltered(shell)
    return shell


_FIRST_WORD = re.compile(r"\s*([A-Za-z_]\w*)")


def _keyword_lines_unfiltered(shell: Any) -> Callable[..., str]:
    """Skip IPython's dynamic prefilter for one-line cells that start with a keyword.

    The prefilter (automagic, autocall, macros) looks at the first word of a
    one-line cell; a Python keyword (``import``, ``for``, ``pass``...) is
    never a magic, an autocallable or a macro, so the line comes back as it
    went in. Knowing that up front saves ~75 us per cell on an engine whose
    caches are cold. Anything else, or any prefilter transformer installed,
    goes through IPython as usual.
    """
    manager = shell.prefilter_manager
    prefilter_lines = manager.prefilter_lines

    def maybe_prefilter(lines: str, continue_prompt: bool = False) -> str:
        line = lines.rstrip("\n")
        if not continue_prompt and "\n" not in line and not manager.transformers:
            word = _FIRST_WORD.match(line)
            if (word is not None and keyword.iskeyword(word.group(1))
                    and word.group(1) not in shell.user_ns):
                shell._last_input_line = line
                return line
        return prefilter_lines(lines, continue_prompt)

    return maybe_prefilter


def _cached_async_check(shell: Any) -> Callable[..., bool]:
    """Remember, per transformed cell, whether it needs IPython's autoawait.

    IPython compiles every cell an extra time to look for a top-level
    ``await``: a pure function of the cell's text, asked again for every
    broadcast and every loop of the same cell.
    """
    ask = shell.should_run_async
    known: dict[str, bool] = {}

    def should_run_async(raw_cell: str, *, transformed_cell: str | None = None,
                         preprocessing_exc_tuple: Any = None) -> bool:
        if transformed_cell is None or preprocessing_exc_tuple is not None or not shell.autoawait:
            return ask(raw_cell, transformed_cell=transformed_cell,
                       preprocessing_exc_tuple=preprocessing_exc_tuple)
        answer = known.get(transformed_cell)
        if answer is None:
            answer = bool(ask(raw_cell, transformed_cell=transformed_cell,
                              preprocessing_exc_tuple=None))
            _remember_cell(known, transformed_cell, answer)
        return answer

    return should_run_async


class StaticTransformCache:
    """Remember what IPython's static input transformations make of a cell.

    They are a pure function of the cell's text and of the transformer lists
    (``%magic``, ``!cmd``, ``obj?``, prompts, indentation), yet they tokenize
    the cell every time: on an engine among hundreds, whose caches are cold
    when a command arrives, that is ~100 us of a no-op's ~500 us. The same
    cells come back again and again (every engine of a broadcast, loops of
    commands), so the result is kept per text, and all of it is forgotten if
    a transformer is added or removed. IPython's dynamic transformations
    (automagic, autocall), which depend on the namespace, still run each time.
    """

    MAX_CELLS = 256
    MAX_CELL_CHARS = 4096

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._transform = manager.transform_cell
        self._transformers: tuple[Any, ...] = ()
        self._cells: dict[str, str] = {}

    def _current(self) -> tuple[Any, ...]:
        m = self._manager
        return (*m.cleanup_transforms, None, *m.line_transforms, None, *m.token_transformers)

    def __call__(self, cell: str) -> str:
        transformers = self._current()
        if transformers != self._transformers:
            self._cells.clear()
            self._transformers = transformers
        done = self._cells.get(cell)
        if done is None:
            done = self._transform(cell)
            _remember_cell(self._cells, cell, done)
        return done


def _remember_cell(cells: dict[str, Any], cell: str, value: Any) -> None:
    """Keep what a cell's text gave, for cells up to MAX_CELL_CHARS, the newest MAX_CELLS."""
    if len(cell) <= StaticTransformCache.MAX_CELL_CHARS:
        if len(cells) >= StaticTransformCache.MAX_CELLS:
            del cells[next(iter(cells))]  # the oldest
        cells[cell] = value


def _plain(mapping: dict[str, Any]) -> dict[str, Any]:
    """Return a dict that Foolscap can send: str keys, plain values."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, (str, bytes, int, float, bool, type(None))):
            out[str(key)] = value
        elif isinstance(value, dict):
            out[str(key)] = _plain(value)
        elif isinstance(value, (list, tuple)):
            out[str(key)] = [v if isinstance(v, (str, int, float, bool)) else repr(v)
                             for v in value]
        else:
            out[str(key)] = repr(value)
    return out


class _Recorder:
    """Holds the record of the command being run on the shell thread."""

    def __init__(self) -> None:
        self.current: dict[str, Any] = {}


@implementer(IEngineKernel)
class _Capture:
    """Point sys.stdout/stderr at a command's streams while it runs."""

    def __init__(self, stdout: OutputStream, stderr: OutputStream) -> None:
        self.streams = stdout, stderr

    def __enter__(self) -> None:
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.streams

    def __exit__(self, *exc: Any) -> None:
        sys.stdout, sys.stderr = self.saved


class EngineKernel:
    """An IPython shell driven by execute/push/pull/apply; shell thread only."""

    def __init__(self, on_output: Callable[[str, str], None] | None = None,
                 runner: ShellRunner | None = None) -> None:
        self.engine_id: int | None = None
        self._recorder = _Recorder()
        self.stdout = OutputStream("stdout", on_output)
        self.stderr = OutputStream("stderr", on_output)
        self.shell = _make_shell(self._recorder)
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


class TaskWatchdog:
    """Interrupt the shell thread when a task outlives its timeout."""

    def __init__(self, runner: ShellRunner) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._current: Any = None
        self._fired: Any = None
        self._timer: threading.Timer | None = None

    def start(self, tid: Any, timeout: float) -> None:
        with self._lock:
            self._current, self._fired = tid, None
            self._timer = threading.Timer(timeout, self._expire, (tid,))
            self._timer.daemon = True
            self._timer.start()

    def _expire(self, tid: Any) -> None:
        with self._lock:
            if self._current == tid:
                self._fired = tid
                self._runner.interrupt()

    def fired(self, tid: Any) -> bool:
        return self._fired == tid

    def finish(self, tid: Any) -> bool:
        """Stop watching tid; return whether its timer fired."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._current = None
            return self._fired == tid


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


# -- running jobs on the shell thread ----------------------------------------------


class ShellRunner:
    """Run jobs one at a time on one thread (the shell thread).

    Jobs come from the reactor (Foolscap calls; replies go back through the
    reactor) or, once it is open, straight from the command channel, which
    this thread reads and answers itself.
    """

    def __init__(self) -> None:
        # (job, Deferred), ("channel", offer, host) to open the channel, or None to stop.
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = False
        self.thread_ident: int | None = None
        self.engine_id: int | None = None
        # IPython swallows a KeyboardInterrupt raised in its own machinery
        # (e.g. event callbacks) before a cell's code starts; so while in_cell
        # and not in user code, an interrupt is held and raised when it starts.
        self.in_cell = False
        self._in_user_code = 0  # depth: user code may run cells itself
        self._held_interrupt = False
        # A SIGINT that lands just before a blocking call starts (e.g. between
        # the last bytecode and the sleep syscall) wakes nothing; the reactor
        # re-sends it until the handler has run or the job is over.
        self._job_seq = 0
        self._sigints_sent = 0
        self._sigints_seen = 0
        # A job handed over but not started yet is, for the controller, the
        # running command: an interrupt for it stops it as it starts.
        self._not_started = 0
        self._interrupt_next = False
        # The command channel, once open, is read on this thread (see
        # transport.channel.EngineChannel); jobs from the reactor then wake it
        # through a pipe. Interrupts name the channel call they are meant for.
        self._channel: command_channel.EngineChannel | None = None
        self._channel_host: Any = None  # what runs the channel's calls (the engine)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe already wakes the shell
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._channel_seq = 0  # the last channel call started
        self._interrupt_channel_seq: int | None = None

    def submit(self, job: Callable[[], Any]) -> Deferred[Any]:
        """Queue job for the shell thread; the Deferred fires with its reply."""
        d: Deferred[Any] = Deferred()
        with self._lock:
            self._not_started += 1
        self._put((job, d))
        return d

    def open_channel(self, offer: dict[str, Any], host: Any) -> None:
        """Connect the command channel on the shell thread; host runs its calls.

        host.job(op, args) gives (job, encode), or None for args that are not a
        list; host.output_idle() and host.drain_output() keep a command's live
        output ahead of its reply.
        """
        self._put(("channel", offer, host))

    def stop(self) -> None:
        self._put(None)

    def _put(self, item: Any) -> None:
        self._jobs.put(item)
        if self._channel is not None:  # the shell thread may be waiting on the channel
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass

    def run_forever(self) -> None:
        """Run jobs until stop(); call this on the shell thread."""
        self.thread_ident = threading.get_ident()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)
        while True:
            try:
                items = self._wait()
            except KeyboardInterrupt:
                continue  # a late interrupt that missed its cell
            for item in items:
                if item is None:
                    return
                if isinstance(item, bytes | bytearray):
                    self._serve_channel_call(item)
                elif item[0] == "channel":
                    self._attach_channel(item[1], item[2])
                else:
                    job, d = item
                    BLOBS.settle()  # values lent to downloads stay unchanged until sent
                    reply = self._run(job)
                    reactor.callFromThread(d.callback, reply)

    def _wait(self) -> list[Any]:
        """Return the next jobs from the reactor, or the next frames from the channel."""
        channel = self._channel
        if channel is None:
            return [self._jobs.get()]
        while True:
            if channel.closed:  # the controller closed it: Foolscap from now on
                self._detach_channel()
                return []
            items = []
            try:
                while True:
                    items.append(self._jobs.get_nowait())
            except queue.Empty:
                pass
            if items:
                return items
            for fd, _event in self._poll.poll():
                if fd == self._wake_r:
                    os.read(fd, 4096)
                    continue
                frames = channel.receive()
                if frames:
                    return frames

    def _attach_channel(self, offer: dict[str, Any], host: Any) -> None:
        channel = command_channel.EngineChannel.connect(offer)
        if channel is None:
            return
        if self._channel is not None:
            self._detach_channel()
        with self._lock:
            self._channel_seq, self._interrupt_channel_seq = 0, None
        self._channel_host = host
        self._poll.register(channel.fd, select.POLLIN)
        self._channel = channel  # set last: from now on _put wakes the poll

    def _detach_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            self._poll.unregister(channel.fd)
            channel.close()

    def _serve_channel_call(self, frame: bytes) -> None:
        channel = self._channel
        if channel is None or channel.closed:
            return  # a frame behind a bad one, or the controller is gone
        try:
            seq, op, args, *tag = replies.loads(frame)  # [seq, op, args(, tag)]
            found = self._channel_host.job(op, args, *tag[:1])
        except (ValueError, TypeError) as e:
            log.warn("command channel: bad frame ({e}); closing", e=e)
            self._detach_channel()
            return
        if found is None:
            channel.answer(seq, False, error_to_wire(
                KernelError(f"unknown command {op!r}"), self.engine_id))
            return
        job, encode = found
        BLOBS.settle()
        reply = self._run(job, channel_seq=seq)
        if not self._channel_host.output_idle():
            # The reply must not overtake the command's last output (on Foolscap).
            threads.blockingCallFromThread(reactor, self._channel_host.drain_output)
        channel.answer(seq, True, replies.encode(reply) if encode else reply)

    def _run(self, job: Callable[[], Any], channel_seq: int | None = None) -> dict[str, Any]:
        try:
            try:
                with self._lock:
                    self._busy = True
                    self._held_interrupt = False
                    self._job_seq += 1
                    if channel_seq is None:
                        self._not_started -= 1
                        interrupted, self._interrupt_next = self._interrupt_next, False
                    else:
                        self._channel_seq = channel_seq
                        interrupted = self._interrupt_channel_seq == channel_seq
                if interrupted:
                    raise KeyboardInterrupt  # interrupted before it could start
                value = job()
                return {"engine_id": self.engine_id, "status": "ok", "value": value}
            finally:
                with self._lock:
                    self._busy = False
        except BaseException as e:  # noqa: B036 - user code may raise anything
            if isinstance(e, SystemExit):
                e = RuntimeError(f"user code called exit({e.code!r}); the engine keeps running")
            try:
                return _error_reply(self.engine_id, e)
            except KeyboardInterrupt:
                return _error_reply(self.engine_id, KeyboardInterrupt())

    def _resend(self, job_seq: int, tries: int) -> None:
        with self._lock:
            if (not self._busy or self._job_seq != job_seq or tries <= 0
                    or self._sigints_seen >= self._sigints_sent):
                return
            signal.pthread_kill(self.thread_ident, signal.SIGINT)
        reactor.callLater(RESEND_INTERRUPT, self._resend, job_seq, tries - 1)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """Raise KeyboardInterrupt, unless IPython would swallow it: then hold it."""
        self._sigints_seen = self._sigints_sent
        if not self._busy:
            return  # late, its job is over: never break a reply being sent
        if self.in_cell and not self._in_user_code:
            self._held_interrupt = True
            return
        raise KeyboardInterrupt

    def guard_cells(self, shell: Any) -> None:
        """Wrap shell.run_code so held interrupts are raised as user code starts."""
        run_code = shell.run_code
        runner = self

        async def guarded_run_code(code_obj: Any, result: Any = None, *,
                                   async_: bool = False) -> Any:
            try:
                with runner._lock:
                    # Count first: a signal from now on raises instead of being held.
                    runner._in_user_code += 1
                    held, runner._held_interrupt = runner._held_interrupt, False
                if held:
                    code_obj = compile("raise KeyboardInterrupt", "<interrupt>", "exec")
                return await run_code(code_obj, result, async_=async_)
            finally:
                runner._in_user_code -= 1

        shell.run_code = guarded_run_code

    @property
    def busy(self) -> bool:
        return self._busy

    def interrupt(self, channel_seq: int | None = None) -> bool:
        """Raise KeyboardInterrupt in the running job; False if idle.

        With channel_seq, only in that command channel call: at once if it
        runs, as it starts if it has not yet; False if it is over.
        """
        with self._lock:
            if channel_seq is not None:
                if channel_seq > self._channel_seq:
                    self._interrupt_channel_seq = channel_seq
                    return True
                if channel_seq < self._channel_seq:
                    return False
            elif not self._busy and self._not_started > 0:
                self._interrupt_next = True
                return True
            if not self._busy or self.thread_ident is None:
                return False
            if self.in_cell and not self._in_user_code:
                self._held_interrupt = True  # raised when the cell's code starts
            elif self.thread_ident == threading.main_thread().ident:
                # A real signal also breaks blocking calls such as time.sleep.
                self._sigints_sent += 1
                signal.pthread_kill(self.thread_ident, signal.SIGINT)
                reactor.callLater(RESEND_INTERRUPT, self._resend, self._job_seq, 40)
            else:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread_ident), ctypes.py_object(KeyboardInterrupt)
                )
            return True


# -- the network side ------------------------------------------------------------


@implementer(RIEngine)
class EngineReferenceable(Referenceable):  # type: ignore[misc]
    """The engine as published to the controller; runs on the reactor thread."""

    def __init__(self, kernel_factory: Callable[[], EngineKernel], runner: ShellRunner,
                 info: dict[str, Any]) -> None:
        self._runner = runner
        self._info = info
        self.tls_context: Any = None  # set once connected: the data channel's TLS identity
        self.controller_host: str | None = None
        self.local_data: datachannel.LocalServer | None = None  # same-host transfers
        self._kernel: EngineKernel | None = None
        self._kernel_factory = kernel_factory
        self._output_observer: Any = None
        self.stream = OutputBatcher(self._send_output)
        # Task replies that outlive a lost controller (issue 15); on_late sends them.
        self.late = LateReplies()
        self.on_late: Callable[[], None] = lambda: None
        self._process: psutil.Process | None = None  # for stats(), made on first use
        self._debug: DebugSession | None = None  # the debugger a client drives, if any
        self._debug_reply: Deferred[dict[str, Any]] | None = None  # its next prompt

    def _send_output(self, chunks: list[list[str]]) -> Deferred[None] | None:
        if self._output_observer is None:
            return None
        d = foolscap_transport.call(self._output_observer, "output", chunks)
        return d.addErrback(lambda f: None)  # the controller may be gone: nothing to tell

    def _flushed(self, reply: Any) -> Any:
        """Send a command's last output, and let it be delivered, before its reply.

        Foolscap runs inbound calls a turn later but completes answers at once,
        so a reply sent right behind the output could overtake it.
        """
        d = self.stream.flush()
        if d is None:
            return reply
        return d.addBoth(lambda _: reply)

    def _kernel_now(self) -> EngineKernel:
        """Return the kernel, creating it on first use (on the shell thread)."""
        if self._kernel is None:
            self._kernel = self._kernel_factory()
            self._kernel.debug_session_factory = self._debug_session
        self._kernel.engine_id = self._runner.engine_id
        return self._kernel

    def job(self, name: Any, args: Any,
            tag: str | None = None) -> tuple[Callable[[], Any], bool] | None:
        """Return (job, whether its reply is msgpack-encoded) for a command; None if args
        is not a list. The job runs on the shell thread: EngineKernel.dispatch. A tagged
        command's reply is kept for a restarted controller (engine/rejoin.py)."""
        if not isinstance(args, list):
            return None
        if not (isinstance(tag, str) and len(tag) <= MAX_TAG):
            tag = None
        entry = ops.OPS.get(name) if isinstance(name, str) else None
        # Both jobs call dispatch themselves: no extra frame per command (test_hops).
        if name == "run_tasks" and args and isinstance(args[0], list):
            return self._kept_if_lost(args), (entry is None or entry.encoded)
        return self._noted_if_lost(name, args, tag), (entry is None or entry.encoded)

    def _noted_if_lost(self, name: Any, args: list[Any],
                       tag: str | None = None) -> Callable[[], Any]:
        """Run a command; note it if it ends after the controller went away (issue
        15): the engine reports it when it rejoins; its record stays in the history.
        A tagged command's reply is kept, to be fetched by a restarted controller."""
        late = self.late

        def job() -> Any:
            generation = late.command_started(tag) if tag else late.generation
            outcome: dict[str, Any] = {}
            reply: Any = None
            try:
                value = self._kernel_now().dispatch(name, args)
                outcome = {"status": "ok", "value": value}
                reply = {"engine_id": self._runner.engine_id, "status": "ok", "value": value}
                return value
            except _CellFailed as e:
                outcome = {"status": "error", "value": e.record, "error": e.record.get("error")}
                reply = _error_reply(self._runner.engine_id, e) if tag else None
                raise
            except BaseException as e:  # noqa: B036 - noted, then handled as before
                outcome = {"status": "error", "error": {"ename": type(e).__name__}}
                reply = _error_reply(self._runner.engine_id, e) if tag else None
                raise
            finally:
                back = late.lost_since(generation) and late.note(str(name), outcome)
                if tag:
                    back = late.command_finished(generation, tag, reply) or back
                if back:
                    reactor.callFromThread(self.on_late)

        return job

    def _kept_if_lost(self, args: list[Any]) -> Callable[[], Any]:
        """Run a task batch; keep its replies if the controller goes away meanwhile
        (issue 15)."""
        batch = args[0]

        def job() -> Any:
            generation = self.late.started(
                [item[0] for item in batch if isinstance(item, list) and item])
            value = None
            try:
                value = self._kernel_now().dispatch("run_tasks", args)
                return value
            finally:
                if self.late.finished(generation, value):
                    reactor.callFromThread(self.on_late)

        return job

    def output_idle(self) -> bool:
        return self.stream.idle()

    def drain_output(self) -> Deferred[None]:
        return self.stream.drain()

    def remote_run(self, name: str, args: list[Any], tag: str | None = None) -> Deferred[Any]:
        """Queue one command of the op table for the shell thread."""
        job, encoded = self.job(name, list(args), tag)  # type: ignore[misc]
        d = self._runner.submit(job)
        if encoded:
            d.addBoth(self._flushed).addCallback(replies.encode)
        return d

    def remote_kept_result(self, tag: str) -> Any:
        """Hand a kept reply to a restarted controller: [kept?, reply (None: too large)]."""
        kept, reply = self.late.kept_reply(tag)
        return [kept, replies.encode(reply) if reply is not None else None]

    def remote_subscribe_output(self, observer: Any) -> None:
        """Send live stdout/stderr to observer.output(chunks) from now on."""
        self._output_observer = observer

    def remote_kill(self) -> None:
        log.info("killed by the controller")
        # Let Foolscap send the answer before the process goes.
        reactor.callLater(0.05, os._exit, 0)

    def remote_restart(self) -> None:
        """Start afresh in this process: same pid and id, a new namespace (mec.restart)."""
        if "mpi_rank" in self._info:
            raise KernelError("an MPI rank cannot be restarted alone: restart the whole job "
                              "(ipcluster start --mpi --restart-engines does on a death)")
        log.info("restarting on the controller's request")
        reactor.callLater(0.05, exec_fresh, self._runner.engine_id)

    def remote_interrupt(self, channel_seq: int | None = None) -> bool:
        return self._runner.interrupt(channel_seq)

    def remote_open_command_channel(self, engine_id: int, offer: dict[str, Any]) -> bool:
        """Take queued commands over the controller's local socket (transport.channel)."""
        if not command_channel.enabled() or not command_channel.valid_engine_offer(offer):
            return False  # IPYTHON1_COMMAND_CHANNEL=0 here too: Foolscap only
        self._runner.open_channel(offer, self)
        return True

    def remote_open_transfer(self, pairing_id: bytes, secret: bytes, relay_port: int,
                             direction: str, blob_id: bytes, sizes: list[int]) -> bool:
        """Serve one data-channel transfer on a worker thread (never the shell thread)."""
        if relay_port == 0:  # same host: the client comes to our local socket
            if self.local_data is None:
                raise datachannel.TransferError("this engine has no local data channel")
            self.local_data.expect(pairing_id, secret)  # a book of tickets
            return True
        if self.tls_context is None or self.controller_host is None:
            raise datachannel.TransferError("this engine has no data channel")
        d = threads.deferToThread(
            datachannel.engine_transfer, self.tls_context,
            addresses.join_host_port(self.controller_host, relay_port),
            pairing_id, secret, direction, blob_id, sizes, BLOBS)
        d.addErrback(lambda f: log.warn("data transfer failed: {e}", e=f.getErrorMessage()))
        return True

    def remote_properties(self) -> dict[str, Any]:
        return dict(self._info, busy=self._runner.busy)

    # -- remote pdb: prompts go to the controller, lines come back (see engine.debugger) --

    def _debug_session(self, at_breakpoint: bool) -> DebugSession:
        """Make a debugger whose prompts reach the client (called on the shell thread)."""
        def prompt(text: str) -> None:
            reactor.callFromThread(self._debugger_prompt, session, text, at_breakpoint)

        def end(text: str) -> None:
            reactor.callFromThread(self._debugger_ended, session, text)

        session = DebugSession(self._runner.engine_id, prompt, end)
        self._debug = session
        return session

    def _debugger_prompt(self, session: DebugSession, text: str, at_breakpoint: bool) -> None:
        reply, self._debug_reply = self._debug_reply, None
        if reply is not None:
            reply.callback({"output": text, "waiting": True})
            return

        def answered(taken: Any) -> None:
            if taken is not True:  # no client will drive it: go on, or give up
                log.info("no client to drive the debugger; {what}",
                         what="continuing" if at_breakpoint else "quitting")
                session.feed("continue" if at_breakpoint else None)

        observer = self._output_observer
        d = (foolscap_transport.call(observer, "debugger", text) if observer
             else defer.succeed(False))
        d.addCallbacks(answered, lambda f: answered(False))

    def _debugger_ended(self, session: DebugSession, text: str) -> None:
        if self._debug is session:
            self._debug = None
        reply, self._debug_reply = self._debug_reply, None
        if reply is not None:
            reply.callback({"output": text, "waiting": False})

    def remote_debug_input(self, line: str) -> Any:
        """Give the waiting debugger a line; fire with its output up to the next prompt."""
        session = self._debug
        if session is None or not session.waiting or self._debug_reply is not None:
            return {"output": "", "waiting": False}
        self._debug_reply = Deferred()
        session.feed(line)
        return self._debug_reply

    def remote_stats(self) -> dict[str, Any]:
        """Answer on the reactor thread, so a busy engine still reports."""
        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first reading is always 0
        with self._process.oneshot():
            return {"cpu": self._process.cpu_percent(None),
                    "rss": self._process.memory_info().rss, "busy": int(self._runner.busy)}

    def remote_logs(self, lines: int) -> list[str]:
        return LOG_RING.tail(lines)


def engine_info() -> dict[str, Any]:
    """Describe this engine process for the controller."""
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "ipython1": __version__,
        "cwd": os.getcwd(),
        "host_key": localhost.host_key(),
        "versions": local_versions(),
    }


# An engine that cannot register says so after this many seconds, then every
# UNREACHABLE_REPORT_EVERY seconds, until its --connect-timeout.
UNREACHABLE_REPORT_AFTER = 5.0
UNREACHABLE_REPORT_EVERY = 15.0


class EngineService(service.MultiService):
    """Connect to the controller, register, and serve until it goes away."""

    def __init__(self, furl_file: str, runner: ShellRunner, connect_timeout: float = 60.0,
                 furl: str | None = None, info: dict[str, Any] | None = None,
                 on_controller_lost: Callable[[], None] | None = None,
                 own_shell_thread: bool = True,
                 reconnect_timeout: float = RECONNECT_TIMEOUT) -> None:
        super().__init__()
        self.furl_file = furl_file
        self.furl = furl
        self.runner = runner
        self.connect_timeout = connect_timeout
        # How long to keep trying to rejoin a lost controller (0: exit at once).
        self.reconnect_timeout = reconnect_timeout
        self._registration: Any = None
        self.info = dict(engine_info(), **(info or {}))
        self.on_controller_lost = on_controller_lost or (lambda: os._exit(0))
        self.own_shell_thread = own_shell_thread
        self.engine_id: int | None = None
        self.registered: Deferred[int] = Deferred()
        self.tub = None
        self.referenceable = EngineReferenceable(self._make_kernel, runner, self.info)
        self.referenceable.on_late = self._deliver_late

    def _make_kernel(self) -> EngineKernel:
        return EngineKernel(on_output=self.referenceable.stream.write, runner=self.runner)

    def startService(self) -> None:
        super().startService()
        globalLogPublisher.addObserver(LOG_RING)
        if self.own_shell_thread:
            threading.Thread(target=self.runner.run_forever, name="shell", daemon=True).start()
        # An MPI rank may sit in a GIL-holding collective, deaf to pings.
        self.tub = wire.client_tub(
            wire.MPI_DISCONNECT_TIMEOUT if "mpi_rank" in self.info else None)
        if datachannel.local_enabled():
            try:
                self.referenceable.local_data = datachannel.LocalServer(BLOBS)
                self.info["local_data"] = self.referenceable.local_data.info()
            except OSError as e:
                log.warn("no local data channel: {e}", e=e)
        # Build the IPython shell before registering: registered means ready.
        d = self.runner.submit(self.referenceable._kernel_now)
        d.addCallback(lambda _: self._register())
        d.addCallbacks(self.registered.callback, self._register_failed)

    def stopService(self) -> Any:
        if self.referenceable.local_data is not None:
            self.referenceable.local_data.close()
        return super().stopService()

    @defer.inlineCallbacks
    def _register(self, rejoin: bool = False) -> Any:
        timeout = self.reconnect_timeout if rejoin else self.connect_timeout
        started = time.monotonic()
        deadline = started + timeout
        delay = 0.05
        last_error: Exception | None = None
        next_report = started + UNREACHABLE_REPORT_AFTER
        while time.monotonic() < deadline:
            info = self.info
            if rejoin:  # the same id, and what finished while the controller was away
                info = dict(info, requested_id=self.engine_id, rejoin=True,
                            **self.referenceable.late.registration_info())
            if last_error is not None and time.monotonic() >= next_report and not rejoin:
                # Still retrying: tell whoever watches (a terminal, a job's output file).
                next_report = time.monotonic() + UNREACHABLE_REPORT_EVERY
                self._report_unreachable(last_error, time.monotonic() - started)
            try:
                furl = self.furl or wire.resolve_furl(self.furl_file)
                controller = yield wire.get_reference(
                    self.tub, furl, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                engine_id = yield controller.callRemote(
                    "register_engine", self.referenceable, info).addErrback(refusal)
            except VersionMismatch:
                raise  # retrying cannot help
            except Exception as e:  # the controller may not be up yet: retry
                last_error = e
                yield _sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if rejoin:
                self.referenceable.late.rejoined(len(info["late_tasks"]), info["kept_results"])
            self._registration = controller
            self.engine_id = self.runner.engine_id = engine_id
            self.referenceable.controller_host = wire.peer_host(controller, furl)
            self.referenceable.tls_context = datachannel.server_context(self.tub.getCertData())
            controller.notifyOnDisconnect(self._controller_lost)
            if rejoin:  # what ended during the registration call goes now
                self._deliver_late()
            log.info("registered with the controller as engine {id}", id=engine_id)
            return engine_id
        source = "--furl" if self.furl else f"FURL file {self.furl_file}"
        raise KernelError(
            f"could not {'rejoin' if rejoin else 'register with'} the controller within "
            f"{timeout:g} s ({source}): {last_error}"
        )

    def _report_unreachable(self, error: Exception, waited: float) -> None:
        # A connection error names the addresses tried and what to check (wire.get_reference).
        message = (f"ipengine: no controller yet after {waited:.0f} s, still trying until "
                   f"{self.connect_timeout:g} s: {error}")
        log.warn("{msg}", msg=message)
        sys.__stderr__.write(message + "\n")
        sys.__stderr__.flush()

    def _register_failed(self, failure: Any) -> None:
        log.error("{msg}", msg=failure.getErrorMessage())
        sys.__stderr__.write(f"ipengine: {failure.getErrorMessage()}\n")
        self.registered.errback(failure)
        os._exit(3)

    def _controller_lost(self, *args: Any) -> None:
        self.referenceable.late.lost()
        self._registration = None
        if self.reconnect_timeout <= 0:
            log.info("lost the connection to the controller; exiting")
            self.on_controller_lost()
            return
        # Keep the namespace (and a running command) and rejoin with the same id.
        log.info("lost the connection to the controller; trying to rejoin for up to "
                 "{t:g} s as engine {id}", t=self.reconnect_timeout, id=self.engine_id)
        d = self._register(rejoin=True)

        def gave_up(failure: Any) -> None:
            log.error("{msg}; exiting", msg=failure.getErrorMessage())
            self.on_controller_lost()

        d.addErrback(gave_up)

    def _deliver_late(self) -> None:
        """Send task replies kept while the controller was away, if it is back."""
        registration = self._registration
        if registration is None or not self.referenceable.late.connected:
            return  # they go with the next registration
        late = self.referenceable.late.take()
        if not late["tasks"] and not late["finished"] and not late["results"]:
            return
        d = registration.callRemote("deliver_late", self.engine_id, late)
        d.addErrback(lambda f: self.referenceable.late.put_back(late))


def _sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)

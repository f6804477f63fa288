"""The exception hierarchy of ipython1.

Errors cross the wire as plain data (see `error_to_wire`/`error_from_wire`),
never as pickled Failures: a client does not need the engine's libraries to
read an engine's error, and the controller never unpickles anything.
"""

from __future__ import annotations

import re
from typing import Any


class KernelError(Exception):
    """Base of every ipython1 error."""


class SerializationError(KernelError):
    """A value could not be serialized or deserialized."""


class InvalidEngineID(KernelError):
    """A target names an engine that is not registered."""


class NoEnginesRegistered(KernelError):
    """A command was sent but no engine is registered."""


class QueueCleared(KernelError):
    """A queued command was dropped by clear_queue()."""


class ConnectionLost(KernelError):
    """The connection to the controller went away."""


class ControllerNotFound(KernelError):
    """No FURL file, or no controller answers at its FURL."""


class ClientTimeout(KernelError):
    """A blocking call did not finish within its timeout."""


class ResultNotReady(KernelError):
    """A pending result was asked for without blocking and is not ready."""


class InvalidPendingResult(KernelError):
    """A pending result id is unknown (never issued, or already fetched)."""


class PermissionDenied(KernelError):
    """The user's capability does not allow this operation."""


class InvalidUserName(KernelError):
    """A user name is malformed, taken, or names no user."""


class MPIUnavailable(KernelError):
    """MPI was asked for but mpi4py or an MPI runtime is missing."""


class SessionFileError(KernelError):
    """A saved session file does not parse; nothing was run."""


class UnmetDependency(KernelError):
    """A task's after= or depend= can never be satisfied."""


class TaskAborted(KernelError):
    """A task was cancelled with abort() before it ran."""


class TaskTimeout(KernelError):
    """A task ran longer than its timeout (its engine was interrupted)."""


class InvalidTaskID(KernelError):
    """A task id is unknown (never submitted, or its result was cleared)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a blocking call; the message says which engines were interrupted."""

    def _render_traceback_(self) -> list[str]:
        """One line in IPython and Jupyter, not the client's waiting frames."""
        return [f"KeyboardInterrupt: {self}"]


class TaskRejectError(KernelError):
    """Raised by a task's own code on an engine: run this task on another engine.

    The task farm then treats that engine as one whose dependencies are unmet
    (no attempt is charged); once every engine has rejected the task, it fails
    with UnmetDependency (as in IPython 0.10, where a rejected task was retried).
    """


class VersionMismatch(KernelError):
    """The two sides run incompatible ipython1 versions; the message names both."""


class EngineError(KernelError):
    """An engine died or vanished while a command was queued or running.

    ``death`` says what is known of how: ``host``, ``pid``, ``exit`` (e.g.
    "killed by signal 9 (SIGKILL)", when a supervisor saw it) and ``stderr``
    (its last lines); the message names them too.
    """

    def __init__(self, engine_id: int, message: str = "",
                 death: dict[str, Any] | None = None) -> None:
        self.engine_id = engine_id
        self.message = message or f"engine {engine_id} died"
        self.death = dict(death or {})
        self.host = self.death.get("host")
        self.exit = self.death.get("exit")
        self.stderr = self.death.get("stderr")
        super().__init__(self.message)

    def __reduce__(self) -> Any:
        return (EngineError, (self.engine_id, self.message, self.death))


class RemoteError(KernelError):
    """User code raised on an engine; carries the engine id and the traceback."""

    def __init__(
        self,
        engine_id: int | None,
        ename: str,
        evalue: str,
        traceback: str = "",
        execution_count: int | None = None,
    ) -> None:
        self.engine_id = engine_id
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.execution_count = execution_count
        super().__init__(engine_id, ename, evalue)

    def __reduce__(self) -> Any:
        return (
            RemoteError,
            (self.engine_id, self.ename, self.evalue, self.traceback, self.execution_count),
        )

    def __str__(self) -> str:
        where = f"[engine {self.engine_id}] " if self.engine_id is not None else ""
        return f"{where}{self.ename}: {self.evalue}"

    def render_traceback(self) -> str:
        """Return the remote traceback as the engine formatted it."""
        return self.traceback or str(self)

    def _render_traceback_(self) -> list[str]:
        """Show the engine's frames in IPython and Jupyter, not the client's."""
        header = f"[engine {self.engine_id}] " if self.engine_id is not None else ""
        if not self.traceback:
            return [f"{header}{self.ename}: {self.evalue}"]
        return [f"{header}{self.ename}: {self.evalue}", *self.traceback.rstrip("\n").split("\n")]


# Tracebacks of this many kinds of error are shown in full; the rest one line each.
SHOWN_TRACEBACKS = 4
SHOWN_SUMMARIES = 10
_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|In ?\[\d+\]")


def _group_key(err: BaseException) -> tuple[str, ...]:
    """What makes two engines' errors the same error (addresses and In[n] aside)."""
    if isinstance(err, RemoteError):
        parts = (err.ename, err.evalue, err.traceback)
    else:
        parts = (type(err).__name__, _strip_engine(str(err)))
    return tuple(_VOLATILE.sub("", p) for p in parts)


def _strip_engine(text: str) -> str:
    return re.sub(r"^\[engine \d+\] ", "", text)


class CompositeError(KernelError):
    """Errors from several engines; `raise_exception(engine_id)` re-raises one."""

    def __init__(self, message: str, errors: list[KernelError], results: list[Any] | None = None):
        self.message = message
        self.errors = errors
        # Results of the engines that succeeded, so nothing is lost.
        self.results = results or []
        super().__init__(message)

    def __str__(self) -> str:
        lines = [f"{self.message} ({len(self.errors)} engine(s) failed):"]
        groups = self.groups()
        for ids, err in groups[:SHOWN_SUMMARIES]:
            lines.append(f"  {self._summary(ids, err)}")
        if len(groups) > SHOWN_SUMMARIES:
            lines.append(f"  ... {len(groups) - SHOWN_SUMMARIES} more kinds of error")
        return "\n".join(lines)

    def groups(self) -> list[tuple[list[int | None], KernelError]]:
        """Group the engines whose errors are the same; each group with its first error."""
        grouped: dict[tuple[str, ...], tuple[list[int | None], KernelError]] = {}
        for err in self.errors:
            ids, _ = grouped.setdefault(_group_key(err), ([], err))
            ids.append(getattr(err, "engine_id", None))
        return list(grouped.values())

    @staticmethod
    def _summary(ids: list[int | None], err: KernelError) -> str:
        known = [i for i in ids if isinstance(i, int)]
        if not known:
            where = "engine ?"
        elif len(known) == 1:
            where = f"engine {known[0]}"
        else:
            # the client's half: only when an error names its targets
            from ipython1.client.events import format_targets

            where = f"engines {format_targets(known)}"
        what = (f"{err.ename}: {err.evalue}" if isinstance(err, RemoteError)
                else f"{type(err).__name__}: {_strip_engine(str(err))}")
        return f"{where}: {what}"

    def _render_traceback_(self) -> list[str]:
        """Show each kind of error once, with its engines and remote frames; truncate."""
        groups = self.groups()
        lines = [f"CompositeError: {self.message} ({len(self.errors)} engine(s) failed)"]
        for ids, err in groups[:SHOWN_TRACEBACKS]:
            lines.append(f"[{self._summary(ids, err)}]")
            if isinstance(err, RemoteError) and err.traceback:
                lines.extend(err.traceback.rstrip("\n").split("\n"))
        rest = groups[SHOWN_TRACEBACKS:]
        for ids, err in rest[:SHOWN_SUMMARIES]:
            lines.append(f"[{self._summary(ids, err)}]")
        if len(rest) > SHOWN_SUMMARIES:
            lines.append(f"... {len(rest) - SHOWN_SUMMARIES} more kinds of error")
        if len(groups) > SHOWN_TRACEBACKS:
            lines.append("(print_tracebacks() shows every engine's traceback; "
                         "raise_exception(id) raises one)")
        return lines

    def engine_ids(self) -> list[int | None]:
        """Return the ids of the engines that failed."""
        return [getattr(e, "engine_id", None) for e in self.errors]

    def raise_exception(self, engine_id: int | None = None) -> None:
        """Re-raise the error of one engine (the first if none is named)."""
        for err in self.errors:
            if engine_id is None or getattr(err, "engine_id", None) == engine_id:
                raise err
        raise InvalidEngineID(f"engine {engine_id} has no error in this CompositeError")

    def print_tracebacks(self) -> None:
        """Print every engine's remote traceback."""
        for err in self.errors:
            print(f"[engine {getattr(err, 'engine_id', '?')}]")
            print(err.render_traceback() if isinstance(err, RemoteError) else err)


# Errors that travel as data: {"ename", "evalue", "traceback", "engine_id", ...}.
_LOCAL_ERRORS: dict[str, type[KernelError]] = {
    cls.__name__: cls
    for cls in (
        KernelError,
        SerializationError,
        InvalidEngineID,
        NoEnginesRegistered,
        QueueCleared,
        ResultNotReady,
        InvalidPendingResult,
        PermissionDenied,
        InvalidUserName,
        MPIUnavailable,
        ControllerNotFound,
        SessionFileError,
        UnmetDependency,
        TaskAborted,
        TaskTimeout,
        InvalidTaskID,
        TaskRejectError,
        VersionMismatch,
    )
}


def error_to_wire(exc: BaseException, engine_id: int | None = None) -> dict[str, Any]:
    """Describe a local error as plain data for the wire."""
    if isinstance(exc, RemoteError):
        return {
            "kind": "remote",
            "engine_id": exc.engine_id,
            "ename": exc.ename,
            "evalue": exc.evalue,
            "traceback": exc.traceback,
            "execution_count": exc.execution_count,
        }
    if isinstance(exc, EngineError):
        return {"kind": "engine", "engine_id": exc.engine_id, "ename": "EngineError",
                "evalue": exc.message, "traceback": "", "death": exc.death}
    kind = "kernel" if type(exc).__name__ in _LOCAL_ERRORS else "remote"
    return {
        "kind": kind,
        "engine_id": engine_id,
        "ename": type(exc).__name__,
        "evalue": str(exc),
        "traceback": "",
    }


def error_from_wire(data: dict[str, Any]) -> KernelError:
    """Rebuild the exception a wire error description stands for."""
    kind = data.get("kind")
    ename = str(data.get("ename", "Error"))
    evalue = str(data.get("evalue", ""))
    engine_id = data.get("engine_id")
    if kind == "engine":
        death = data.get("death")
        return EngineError(engine_id if engine_id is not None else -1, evalue,
                           death if isinstance(death, dict) else None)
    if kind == "kernel" and ename in _LOCAL_ERRORS:
        # Name the engine, as RemoteError does (e.g. a value pull could not serialize).
        where = f"[engine {engine_id}] " if isinstance(engine_id, int) and \
            not evalue.startswith("[engine ") else ""
        err: KernelError = _LOCAL_ERRORS[ename](where + evalue)
        err.engine_id = engine_id  # type: ignore[attr-defined]
        return err
    remote = RemoteError(
        engine_id, ename, evalue, str(data.get("traceback", "")), data.get("execution_count")
    )
    # What the command printed before it raised: nothing is lost.
    remote.record = data.get("record")  # type: ignore[attr-defined]
    return remote


class PartitionLoadError(KernelError):
    """Engines could not load their partitions; names each file and engine."""

    def __init__(self, message: str, engine_ids: list[int | None]) -> None:
        self.engine_ids = engine_ids
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (PartitionLoadError, (str(self), self.engine_ids))

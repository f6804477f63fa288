"""Tasks as data: what a task runs (``StringTask``, ``MapTask``), what it gave (``TaskResult``).

Task values are serialized here, on the client; the controller only stores
and relays the frames. A map over the task farm is cut into ``MapTask`` chunks
here and its results joined back in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ipython1.common.errors import KernelError, error_from_wire
from ipython1.common.properties import takes_properties
from ipython1.common.scatter import map_chunk as _map_chunk
from ipython1.common.serialize import deserialize, serialize


class _BaseTask:
    """Options common to every task."""

    kind = ""

    def __init__(self, clear_before: bool = False, clear_after: bool = False,
                 retries: int = 0, recovery_task: _BaseTask | None = None,
                 depend: Any = None, timeout: float | None = None, priority: int = 0,
                 after: Iterable[int] | None = None, idempotent: bool = True) -> None:
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if recovery_task is not None and not isinstance(recovery_task, _BaseTask):
            raise TypeError("recovery_task must be a StringTask or a MapTask")
        if timeout is not None and (isinstance(timeout, bool) or
                                    not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, not {priority!r}")
        if depend is not None and not callable(depend) and not (
                isinstance(depend, tuple) and depend and callable(depend[0])):
            raise TypeError("depend must be a callable, or a tuple (callable, *args)")
        after_ids = [] if after is None else [after] if isinstance(after, int) else list(after)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in after_ids):
            raise TypeError(f"after must be a list of task ids, not {after!r}")
        self.clear_before = bool(clear_before)
        self.clear_after = bool(clear_after)
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend
        self.timeout = timeout
        self.priority = priority
        self.after = after_ids
        # False: never run twice; when its outcome is unknown (its engine died, or a
        # controller restart lost its result) it fails instead of running again.
        self.idempotent = bool(idempotent)

    def _meta(self) -> dict[str, Any]:
        """Return the scheduling fields the controller reads (defaults left out)."""
        meta: dict[str, Any] = {}
        if self.retries:
            meta["retries"] = self.retries
        if self.priority:
            meta["priority"] = self.priority
        if self.timeout is not None:
            meta["timeout"] = float(self.timeout)
        if self.after:
            meta["after"] = list(self.after)
        if not self.idempotent:
            meta["idempotent"] = False
        if self.recovery_task is not None:
            meta["recovery"] = list(self.recovery_task.to_wire())
        if takes_properties(self.depend):
            meta["depend"] = serialize(self.depend)  # f(properties), run by the controller
        return meta

    def _body(self) -> dict[str, Any]:
        """Return what the engine needs besides the task's own fields."""
        body: dict[str, Any] = {"kind": self.kind}
        if self.clear_before:
            body["clear_before"] = True
        if self.clear_after:
            body["clear_after"] = True
        if self.depend is not None and not takes_properties(self.depend):
            f, *args = self.depend if isinstance(self.depend, tuple) else (self.depend,)
            body["depend"] = (f, tuple(args))
        return body

    def to_wire(self) -> tuple[dict[str, Any], list[bytes]]:
        """Return (meta, payload): scheduling fields and the engine's frames."""
        raise NotImplementedError


class StringTask(_BaseTask):
    """Run code on some engine after pushing names; pull names afterwards."""

    kind = "string"

    def __init__(self, code: str, push: dict[str, Any] | None = None,
                 pull: str | Sequence[str] | None = None, **options: Any) -> None:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        if push is not None and (not isinstance(push, dict) or
                                 not all(isinstance(k, str) and k.isidentifier() for k in push)):
            raise TypeError("push must be a dict whose keys are valid Python names")
        names = [] if pull is None else [pull] if isinstance(pull, str) else list(pull)
        if not all(isinstance(k, str) for k in names):
            raise TypeError(f"pull must be a name or a list of names, not {pull!r}")
        super().__init__(**options)
        self.code = code
        self.push = dict(push or {})
        self.pull = names

    def to_wire(self) -> tuple[dict[str, Any], list[bytes]]:
        body = self._body()
        body["code"] = self.code
        if self.push:
            body["push"] = self.push
        if self.pull:
            body["pull"] = list(self.pull)
        return self._meta(), serialize(body)

    def __repr__(self) -> str:
        return f"StringTask({self.code[:60]!r}, pull={self.pull!r})"


class MapTask(_BaseTask):
    """Call func(*args, **kwargs) on some engine; the return value is the result."""

    kind = "map"

    def __init__(self, func: Callable[..., Any], args: Sequence[Any] = (),
                 kwargs: dict[str, Any] | None = None, **options: Any) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        super().__init__(**options)
        self.func = func
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def to_wire(self) -> tuple[dict[str, Any], list[bytes]]:
        body = self._body()
        body.update(func=self.func, args=self.args, kwargs=self.kwargs)
        return self._meta(), serialize(body)

    def __repr__(self) -> str:
        return f"MapTask({getattr(self.func, '__name__', self.func)!r}, args={self.args!r:.60})"


class _Namespace(dict):  # type: ignore[type-arg]
    """The pulled names of a string task: res.ns.b or res.ns['b']."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the task did not pull {name!r}") from None


class TaskResult:
    """What a task did: its value or failure, engine, duration and output."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.tid: int | None = record.get("tid")
        self.status: str = record.get("status", "")
        self.engine_id: int | None = record.get("engine_id")
        self.duration: float | None = record.get("duration")
        self.stdout: str = record.get("stdout", "") or ""
        self.stderr: str = record.get("stderr", "") or ""
        self.attempts: int = record.get("attempts", 0)
        self.recovered: bool = bool(record.get("recovered"))
        self.submitted = record.get("submitted")
        self.started = record.get("started")
        self.completed = record.get("completed")
        error = record.get("error")
        self.failure: KernelError | None = error_from_wire(error) if error else None
        self._value: Any = None
        self._decoded = False
        if self.failure is None:
            self._decode()  # stdout and stderr travel with the value

    @property
    def succeeded(self) -> bool:
        return self.failure is None

    def raise_exception(self) -> None:
        """Raise the task's error, if it failed."""
        if self.failure is not None:
            raise self.failure

    raiseException = raise_exception  # IPython 0.10's docs' spelling

    @property
    def result(self) -> Any:
        """Return a MapTask's value or a StringTask's pulled names; raise if it failed."""
        self.raise_exception()
        self._decode()
        return self._value

    def _decode(self) -> None:
        if self._decoded or self.record.get("value") is None:
            return
        kind, value, self.stdout, self.stderr = deserialize(self.record["value"])
        self._value = _Namespace(value) if kind == "string" else value
        self._decoded = True

    @property
    def ns(self) -> _Namespace:
        """Return the pulled names of a StringTask (res.ns.b)."""
        value = self.result
        if not isinstance(value, _Namespace):
            raise AttributeError("ns is for StringTask results; use .result")
        return value

    def __getitem__(self, name: str) -> Any:
        return self.ns[name]

    # IPython 0.10's names for the same things.
    @property
    def taskid(self) -> int | None:
        return self.tid

    @property
    def engineid(self) -> int | None:
        return self.engine_id

    @property
    def results(self) -> dict[str, Any]:
        """A StringTask's pulled names as a dict ({} if it failed)."""
        return {} if self.failure is not None else dict(self.ns)

    @property
    def keys(self) -> list[str]:
        """The names a StringTask pulled ([] if it failed)."""
        return list(self.results)

    def __repr__(self) -> str:
        if self.failure is not None:
            what = f"failed: {self.failure!r}"
        else:
            what = "ok"
        return (f"<TaskResult tid={self.tid} engine={self.engine_id} {what} "
                f"duration={self.duration if self.duration is None else round(self.duration, 6)}>")


def auto_chunksize(n: int, engines: int) -> int:
    """Pick a chunk size: about 8 chunks per engine, so work balances and failures cost little."""
    return max(1, -(-n // (max(1, engines) * 8)))


def map_specs(func: Callable[..., Any], seqs: Sequence[Sequence[Any]], chunksize: int | None,
              engines: int, options: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """Cut seqs into chunks and build one MapTask spec per chunk."""
    if not seqs:
        raise TypeError("map() needs at least one sequence")
    if not callable(func):
        raise TypeError(f"map() needs a callable, not {type(func).__name__}")
    lists = [list(s) for s in seqs]
    n = min(len(s) for s in lists)
    if chunksize is None:
        chunksize = auto_chunksize(n, engines)
    if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
        raise ValueError(f"chunksize must be a positive int, not {chunksize!r}")
    func_frames = serialize(func)  # once for the whole map
    meta = MapTask(_map_chunk, **options)
    specs, sizes = [], []
    for start in range(0, n, chunksize):
        chunks = [s[start:start + chunksize] for s in lists]
        body = meta._body()
        body.update(func=_map_chunk, args=(_Frames(func_frames), *chunks), kwargs={})
        specs.append((meta._meta(), serialize(body)))
        sizes.append(len(chunks[0]))
    return specs, sizes


class _Frames:
    """A function already serialized once for a whole map (rebuilt on the engine)."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    def __reduce__(self) -> Any:
        return (deserialize, (self.frames,))


def join_map_results(results: list[Any]) -> list[Any]:
    """Concatenate chunk results in order; raise the first failure."""
    out: list[Any] = []
    for res in results:
        if res is None:
            raise KernelError("a map chunk has no result")
        out.extend(res.result)
    return out

"""The op table: every engine command, declared once.

Each entry names a command the engines run from their queues, its arguments
(Foolscap constraints with bounds, in call order), whether the controller's
session log keeps it, and whether an observer may call it. Everything else is
derived from it:

- ``RIEngine.run(op, args)``, the engine's one queued entry, and the check of
  ``args`` against the op's schema that the engine makes on either transport
  (`checked`);
- the multi-engine session's method per op, ``op(*args, targets, block)``
  (`session_schemas`, in ``RIMultiEngineSession``), which the command channel
  checks as Foolscap does;
- ``EngineKernel.dispatch``, which calls the kernel method of the op;
- the observer rule (`observer_allowed`).

Adding a command: an entry here, the kernel method, the client method (and
its docs). ``tests/unit/test_ops.py`` fails when one of them is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foolscap.api import Violation
from foolscap.constraint import IConstraint
from foolscap.remoteinterface import RemoteMethodSchema
from foolscap.schema import Optional

from ipython1.common.constraints import (
    Flag,
    Frames,
    Keys,
    MaybeInt,
    MaybeText,
    Namespace,
    SessionReply,
    Targets,
    TaskBatch,
    Text,
)


@dataclass(frozen=True)
class Op:
    """One engine command: its arguments and who may run it."""

    args: tuple[tuple[str, Any], ...] = ()  # (name, constraint), in call order
    logged: bool = False  # kept in the controller's session log (save_session)
    observer: bool = False  # an observer's session may call it
    kernel: str = ""  # the EngineKernel method; default: the op's name
    session: bool = True  # a multi-engine session method op(*args, targets, block)

    def kernel_method(self, name: str) -> str:
        return self.kernel or name


OPS: dict[str, Op] = {
    "execute": Op((("code", Text),), logged=True),
    "push": Op((("namespace", Namespace),), logged=True),
    "pull": Op((("keys", Keys),)),
    # Sessions call it per engine (apply_each: scatter, map, apply).
    "apply": Op((("func", Frames), ("args", Frames)), logged=True, session=False),
    "get_result": Op((("n", MaybeInt),)),
    "keys": Op(),
    "reset": Op(logged=True),
    "history": Op((("start", MaybeInt), ("stop", MaybeInt)), kernel="input_history"),
    "inspect": Op((("name", Text), ("detail_level", int))),
    "who": Op(),
    "whos": Op(),
    "ping": Op(observer=True),
    # Post mortem pdb on the engine's last exception; the client that sent it drives it.
    "debug": Op(),
    "complete": Op((("text", Text), ("line", MaybeText), ("cursor_pos", MaybeInt))),
    # The task farm's batches; the reply is msgpack like every other (the farm
    # decodes it to schedule; each result stays the engine's opaque frames).
    "run_tasks": Op((("batch", TaskBatch),), session=False),
}

# The calls a session keeps on the controller (no engine runs them) that observers may make.
SESSION_OBSERVER_ALLOWED = frozenset({"get_ids", "queue_status", "get_properties"})


class UnknownOp(KeyError):
    """No such command in the op table."""


def op(name: Any) -> Op:
    """Return the table's entry for name; raise UnknownOp."""
    entry = OPS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise UnknownOp(f"unknown command {name!r}")
    return entry


def _schema(args: tuple[tuple[str, Any], ...]) -> RemoteMethodSchema:
    return RemoteMethodSchema(_response=SessionReply, **dict(args))


def _checker(args: tuple[tuple[str, Any], ...]) -> Callable[[Any], None]:
    """Return a check of positional arguments against the constraints, as Foolscap's."""
    checks = tuple((name, IConstraint(constraint).checkObject) for name, constraint in args)

    def check(values: Any) -> None:
        if len(values) != len(checks):
            raise Violation(f"takes {len(checks)} arguments ({len(values)} given)")
        for (name, check_object), value in zip(checks, values, strict=True):
            try:
                check_object(value, True)
            except Violation as v:
                v.setLocation(f"{name}=")
                raise

    return check


# Per op: (its argument check, its EngineKernel method); the engine's hot path.
_ENGINE = {name: (_checker(entry.args), entry.kernel_method(name))
           for name, entry in OPS.items()}


def checked(name: Any, args: Any) -> str:
    """Check a command and its arguments (UnknownOp, Violation); return its kernel method."""
    try:
        check, method = _ENGINE[name]
    except (KeyError, TypeError):
        raise UnknownOp(f"unknown command {name!r}") from None
    check(args)
    return method


def check_args(name: str, args: Any) -> None:
    """Check an engine command's arguments as Foolscap checks a call's (Violation)."""
    checked(name, args)


def session_schemas() -> dict[str, RemoteMethodSchema]:
    """Return the multi-engine session's method per op: op(*args, targets, block, call).

    call: the client's id for the command (0: none); see controller/recovered.py."""
    return {name: _schema((*entry.args, ("targets", Targets), ("block", Flag),
                           ("call", Optional(int, 0))))
            for name, entry in OPS.items() if entry.session}


def observer_allowed() -> frozenset[str]:
    """Return what an observer's session may call."""
    return SESSION_OBSERVER_ALLOWED | {name for name, e in OPS.items() if e.observer}


def describe(name: str, args: tuple[Any, ...]) -> str:
    """Describe a command for queue_status and events (a short text, never values)."""
    words = [str(a)[:50] for a in args if isinstance(a, (str, int)) and not isinstance(a, bool)]
    if name == "pull" and args and isinstance(args[0], list):
        words = [", ".join(str(k) for k in args[0])]
    return " ".join([name, *words])



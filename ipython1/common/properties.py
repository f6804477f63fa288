"""Engine properties (IPython 0.10): plain data about each engine, kept by the controller.

Clients set them (``mec.set_properties({"gpu": True}, targets=3)``) and tasks
may depend on them: ``StringTask(..., depend=lambda props: props.get("gpu"))``
is evaluated *on the controller* against each engine's properties before the
task is sent, as IPython 0.10 did, so an engine without the property never
sees the task. Values are plain data (None, bool, int, float, str, bytes and
lists, tuples or str-keyed dicts of them; a tuple reads back as a list), so
the controller stores them without unpickling anything; only a property
depend function is unpickled, and only the cluster's owner may submit one
(see docs/tasks.md).

Pure logic: no reactor, no Foolscap.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ipython1.common.errors import KernelError

MAX_PROPERTIES = 1000  # names per engine
MAX_DEPTH = 16  # nesting of a property value

ACTIONS = ("set", "del", "clear")


def check_plain(value: Any, depth: int = 0) -> None:
    """Raise KernelError unless value is plain data the wire carries as it is."""
    if depth > MAX_DEPTH:
        raise KernelError("a property value is nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_plain(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise KernelError(f"property dict keys must be str, not {type(key).__name__}")
            check_plain(item, depth + 1)
        return
    raise KernelError(f"a property value must be plain data (None, bool, int, float, str, "
                      f"bytes, list, tuple, dict), not {type(value).__name__}")


def check_names(names: Any) -> list[str]:
    """Return names as a list of str, or raise KernelError."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise KernelError(f"property names must be a str or a list of str, not {names!r:.100}")
    return list(names)


def update(properties: dict[str, Any], action: str, arg: Any) -> None:
    """Apply set (a dict), del (names) or clear to one engine's properties, in place."""
    if action == "set":
        if not isinstance(arg, dict) or not all(isinstance(k, str) for k in arg):
            raise KernelError("set_properties() takes a dict with str keys")
        check_plain(arg)
        if len(set(properties) | set(arg)) > MAX_PROPERTIES:
            raise KernelError(f"an engine holds at most {MAX_PROPERTIES} properties")
        properties.update(arg)
    elif action == "del":
        names = check_names(arg)
        missing = [n for n in names if n not in properties]
        if missing:
            raise KernelError(f"no property {missing[0]!r} on this engine")
        for name in names:
            del properties[name]
    elif action == "clear":
        properties.clear()
    else:
        raise KernelError(f"unknown properties action {action!r} (one of {ACTIONS})")


def select(properties: dict[str, Any], names: Any) -> dict[str, Any]:
    """Return the named properties (all for None); a missing name raises KernelError."""
    if names is None:
        return dict(properties)
    names = check_names(names)
    missing = [n for n in names if n not in properties]
    if missing:
        raise KernelError(f"no property {missing[0]!r} on this engine")
    return {n: properties[n] for n in names}


def takes_properties(depend: Any) -> bool:
    """Tell whether a task's depend is a function of an engine's properties (0.10 style).

    ``depend=f`` where f takes one positional argument: ``f(properties)`` runs
    on the controller. ``depend=(f, *args)`` or a function of no argument:
    ``f(*args)`` runs on the engine (see docs/tasks.md).
    """
    if isinstance(depend, tuple) or not callable(depend):
        return False
    try:
        signature = inspect.signature(depend)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind()
        return False  # callable with no argument: an engine-side check
    except TypeError:
        pass
    try:
        signature.bind({})
        return True
    except TypeError:
        return False


def unmet_reason(depend: Callable[[dict[str, Any]], Any], properties: dict[str, Any]) -> str:
    """Call depend(properties); return why the engine does not qualify, or ''."""
    try:
        ok = depend(dict(properties))  # a copy: a depend cannot change the engine's
    except BaseException as e:  # noqa: B036 - not even exit() may stop the controller
        if isinstance(e, KeyboardInterrupt):
            raise
        return f"depend(properties) raised {type(e).__name__}: {e}"
    return "" if ok else "depend(properties) returned False"

"""Functions that read the engine's globals: ``@interactive`` (as in ipyparallel).

A function sent with ``apply``, ``map`` or a task normally carries its own
globals (the names it uses, as they were on the client). Decorated with
``@interactive``, it runs with the engine's user namespace as its globals
instead, so it sees what ``push`` and ``execute`` put there::

    @interactive
    def scaled(x):
        return x * factor          # `factor` is looked up on the engine

    mec.push({"factor": 3})
    mec.apply(scaled, 2)           # [6, 6, 6, 6]
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any


class InteractiveFunction:
    """A function that, once on an engine, takes that engine's user namespace as globals."""

    def __init__(self, func: types.FunctionType) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __reduce__(self) -> Any:
        return (_in_user_namespace, (self.func,))

    def __repr__(self) -> str:
        return f"<interactive {self.func.__qualname__}>"


def interactive(func: Callable[..., Any]) -> Callable[..., Any]:
    """Make func read and write the engine's globals when it runs there."""
    if isinstance(func, InteractiveFunction):
        return func
    if not isinstance(func, types.FunctionType):
        raise TypeError(f"interactive() takes a Python function, not {type(func).__name__}")
    return InteractiveFunction(func)


def _in_user_namespace(func: types.FunctionType) -> Callable[..., Any]:
    """Rebuild func with the IPython user namespace of this process (the engine's) as globals."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:  # not in an engine (e.g. unpickled locally): keep its own globals
        return InteractiveFunction(func)
    bound = types.FunctionType(func.__code__, shell.user_ns, func.__name__, func.__defaults__,
                               func.__closure__)
    bound.__kwdefaults__ = func.__kwdefaults__
    bound.__doc__ = func.__doc__
    bound.__qualname__ = func.__qualname__
    return bound

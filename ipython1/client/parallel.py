"""Mappers and parallel functions (IPython 0.10's mapper(), parallel(), raw_map()).

A mapper fixes how a client maps (targets, blocking; task options for a
TaskClient); ``parallel()`` turns a function into one whose call maps it over
its arguments. They work on the blocking clients and on their Deferred twins
alike: they only call the client's ``map``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

DISTRIBUTIONS = ("b",)  # block: contiguous parts, one per engine (IPython 0.10's default)


def check_dist(dist: str) -> None:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"dist must be 'b' (block distribution), not {dist!r}")


class Mapper:
    """Map functions with a multi-engine client on fixed targets: ``mec.mapper()``."""

    def __init__(self, multiengine: Any, dist: str = "b", targets: Any = "all",
                 block: bool = True) -> None:
        check_dist(dist)
        self.multiengine = multiengine
        self.dist = dist
        self.targets = targets
        self.block = block

    def map(self, func: Callable[..., Any], *seqs: Sequence[Any]) -> Any:
        """Apply func elementwise across the targets; results in order."""
        return self.multiengine.map(func, *seqs, targets=self.targets, block=self.block)


class TaskMapper:
    """Map functions with a task client, each chunk a MapTask with these options."""

    def __init__(self, task_controller: Any, clear_before: bool = False,
                 clear_after: bool = False, retries: int = 0, recovery_task: Any = None,
                 depend: Any = None, block: bool = True, **options: Any) -> None:
        self.task_controller = task_controller
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend
        self.block = block
        self.options = options  # timeout, priority, chunksize...

    def map(self, func: Callable[..., Any], *seqs: Sequence[Any]) -> Any:
        """Apply func to each element on any engines; results in order."""
        options = dict(self.options, clear_before=self.clear_before,
                       clear_after=self.clear_after, retries=self.retries,
                       recovery_task=self.recovery_task, depend=self.depend)
        if self.block is not True:  # the Deferred client has no block
            options["block"] = self.block
        return self.task_controller.map(func, *seqs, **options)


class ParallelFunction:
    """A function whose call maps it over its arguments with a mapper."""

    def __init__(self, func: Callable[..., Any], mapper: Mapper | TaskMapper) -> None:
        self.func = func
        self.mapper = mapper
        functools.update_wrapper(self, func)

    def __call__(self, *seqs: Sequence[Any]) -> Any:
        return self.mapper.map(self.func, *seqs)

    def __repr__(self) -> str:
        return f"<ParallelFunction {getattr(self.func, '__name__', self.func)!r}>"


class Parallel:
    """The decorator ``mec.parallel()`` returns: ``@mec.parallel() def f(x): ...``."""

    def __init__(self, mapper: Mapper | TaskMapper) -> None:
        self.mapper = mapper

    def __call__(self, func: Callable[..., Any]) -> ParallelFunction:
        if not callable(func):
            raise TypeError(f"parallel() decorates a function, not {type(func).__name__}")
        return ParallelFunction(func, self.mapper)


def raw_map(client: Any, func: Callable[..., Any], seqs: Sequence[Sequence[Any]],
            dist: str = "b", targets: Any = None, block: Any = None) -> Any:
    """``raw_map(f, [xs, ys])`` is ``map(f, xs, ys)`` (0.10: keywords after the sequences)."""
    check_dist(dist)
    if isinstance(seqs, (str, bytes)) or not all(hasattr(s, "__len__") for s in seqs):
        raise TypeError("raw_map() takes a list of sequences: raw_map(f, [xs, ys])")
    kwargs: dict[str, Any] = {}
    if targets is not None:
        kwargs["targets"] = targets
    if block is not None:
        kwargs["block"] = block
    return client.map(func, *seqs, **kwargs)

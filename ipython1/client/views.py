"""Views: a multi-engine client restricted to some engines (``mec[0:4]``, ``mec[::2]``, ``mec[3]``).

A view shares its client's connection: every method of ``MultiEngineClient``
works on it with the view's targets as the default, and ipyparallel's
``apply_async``/``apply_sync``/``map_async``/``map_sync`` are there too.
Closing a view does not close the client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ipython1.client.blocking import MultiEngineClient


def resolve(key: int | slice | Sequence[int], ids: Callable[[], list[int]]) -> Any:
    """Turn mec[key] into targets: an int stays one engine; a slice cuts the engine ids."""
    if isinstance(key, bool):
        raise TypeError("engine ids are ints, not bool")
    if isinstance(key, int):
        return key
    if isinstance(key, slice):
        return ids()[key]
    if isinstance(key, (list, tuple, range)) and all(
            isinstance(k, int) and not isinstance(k, bool) for k in key):
        return list(key)
    raise TypeError(f"mec[...] takes an engine id, a slice or a list of ids, not {key!r}")


class View(MultiEngineClient):
    """A MultiEngineClient on fixed targets; blocking like its client."""

    def __init__(self, client: MultiEngineClient, targets: Any) -> None:
        # Share the connection, reactor thread and settings; not a new session.
        self.__dict__.update(client.__dict__)
        self.client = client
        self.targets = targets

    def __len__(self) -> int:
        return 1 if isinstance(self.targets, int) else len(self.targets)

    def view(self, targets: Any) -> View:
        """Narrow this view: view[0] is its first engine, view[::2] every other one."""
        mine = [self.targets] if isinstance(self.targets, int) else list(self.targets)
        if isinstance(targets, int) and not isinstance(targets, bool):
            return View(self.client, mine[targets])
        return View(self.client, resolve(targets, lambda: mine))

    def __repr__(self) -> str:
        return f"<View targets={self.targets!r}>"

    def apply_async(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call func(*args, **kwargs) on the view's engines; return a PendingResult."""
        return self.apply(func, *args, block=False, **kwargs)

    def apply_sync(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call func(*args, **kwargs) on the view's engines and wait for the results."""
        return self.apply(func, *args, block=True, **kwargs)

    def map_async(self, func: Callable[..., Any], *seqs: Sequence[Any]) -> Any:
        """Map func over seqs across the view's engines; return a PendingResult."""
        return self.map(func, *seqs, block=False)

    def map_sync(self, func: Callable[..., Any], *seqs: Sequence[Any]) -> Any:
        """Map func over seqs across the view's engines and wait for the results."""
        return self.map(func, *seqs, block=True)

    def close(self) -> None:
        """Do nothing: the client the view came from owns the connection."""

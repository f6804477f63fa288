"""Call a function on several engines at once, with each engine's own arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from ipython1.common.serialize import serialize

__all__ = ["apply_each"]


def apply_each(client: Any, func: Callable[..., Any],
               args: dict[int, tuple[Any, ...]]) -> Deferred[dict[int, Any]]:
    """Run func(*args[e]) on each engine e in one command; fire with {engine: result}.

    client is an AsyncMultiEngineClient; large arguments take the data channel.
    """
    frames = {e: serialize((a, {})) for e, a in args.items()}
    d = client._apply_each(serialize(func), frames, True, False)
    # The controller answers in the order of sorted engine ids.
    return d.addCallback(lambda results: dict(zip(sorted(frames), results, strict=True)))

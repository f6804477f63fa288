"""How many of ipython1's own functions one execute passes through, per process and transport.

docs/architecture.md lists the eight hops; this keeps new layers from
creeping in unnoticed (issue 13 measured 14 before the op table).
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from ipython1.engine import kernel as engine_module
from tests.unit.test_conformance import Cluster

# (client, controller, engine) functions of ipython1 on the stack, at most.
LIMITS = {("channel", "channel"): (3, 12, 4), ("foolscap", "foolscap"): (3, 8, 3)}


def _ours(stack: list[traceback.FrameSummary]) -> list[str]:
    return [f"{f.filename.rsplit('ipython1/', 1)[-1]}:{f.name}" for f in stack
            if "/ipython1/" in f.filename and "/tests/" not in f.filename]


@pytest.mark.parametrize("links", sorted(LIMITS), ids="-".join)
def test_one_execute_passes_few_functions_on_each_side(
        links: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster(*links)
    cluster.result(cluster.client.execute("a = 1"))  # the kernel exists; caches are warm
    seen: dict[str, list[str]] = {}

    def spy(side: str, cls: Any, name: str) -> None:
        original = getattr(cls, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault(side, _ours(traceback.extract_stack()[:-1]))
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    spy("client", type(cluster.client._calls), "call")
    spy("controller", type(cluster.controller.engines[0].connection), "call")
    spy("engine", engine_module.EngineKernel, "execute")
    cluster.result(cluster.client.execute("a = 2"))
    counts = tuple(len(seen[side]) for side in ("client", "controller", "engine"))
    assert all(n <= limit for n, limit in zip(counts, LIMITS[links], strict=True)), seen

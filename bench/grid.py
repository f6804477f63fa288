"""Cross-host runs: the benchmark's clusters spread over network-namespace hosts.

``run.py --cross-host`` makes a grid of test hosts (``tests/hostgrid.py``: one
network namespace per host on a private bridge, addresses that exist only
inside the grid), runs each system module *inside* the ``cli`` host, and gives
it ``--grid JSON``: where the controller (or scheduler) goes and which hosts
run engines. A system module then starts its servers with ``GridSpec.on``:
every byte between client, controller and engines crosses a veth pair and a
bridge, and no same-host shortcut (Unix sockets, shared memory) can apply.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENGINE_HOSTS = ("e1", "e2")
HOSTS = ("ctl", "cli", *ENGINE_HOSTS)


@dataclass(frozen=True)
class GridHost:
    name: str
    netns: str
    address: str


class GridSpec:
    """Where each part of a cluster runs, as a system module is told it."""

    def __init__(self, hosts: dict[str, GridHost]) -> None:
        self.hosts = hosts
        self.ctl = hosts["ctl"]
        self.engine_hosts = [hosts[n] for n in ENGINE_HOSTS if n in hosts]

    @classmethod
    def from_json(cls, text: str | None) -> GridSpec | None:
        if not text:
            return None
        data = json.loads(text)
        return cls({name: GridHost(**h) for name, h in data.items()})

    @staticmethod
    def on(host: GridHost, argv: Sequence[str]) -> list[str]:
        """Wrap argv to run in host (its namespace and hostname), as hostgrid does."""
        return ["ip", "netns", "exec", host.netns, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', host.name, *argv]

    def spread(self, n: int) -> list[tuple[GridHost, int]]:
        """Split n engines over the engine hosts, as evenly as possible."""
        hosts = self.engine_hosts
        share = [n // len(hosts) + (1 if i < n % len(hosts) else 0) for i in range(len(hosts))]
        return [(h, k) for h, k in zip(hosts, share, strict=True) if k]


def make_grid() -> Any:
    """Make the benchmark's grid (a started tests.hostgrid.HostGrid)."""
    sys.path.insert(0, str(ROOT))
    from tests.hostgrid import HostGrid

    grid = HostGrid(HOSTS)
    grid.start()
    return grid


def describe(grid: Any) -> str:
    """The --grid argument for the system modules."""
    return json.dumps({h.name: {"name": h.name, "netns": h.netns, "address": h.address}
                       for h in grid})

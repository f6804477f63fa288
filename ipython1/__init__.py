"""ipython1: interactive parallel and distributed computing on Twisted and Foolscap."""

from typing import Any

from ipython1 import kernel as _old_names  # noqa: F401 - the module names of before issue 13

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ipython1.Cluster without importing Twisted at `import ipython1`.
    if name == "Cluster":
        from ipython1.cluster.handle import Cluster

        return Cluster
    raise AttributeError(f"module 'ipython1' has no attribute {name!r}")

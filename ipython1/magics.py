"""IPython extension: ``%load_ext ipython1.magics`` installs the %px magics.

The magics (`ipython1.client.magics`) connect to the default profile's
controller when first used; ``mec.activate()`` installs them for a client of
your own instead.
"""

from __future__ import annotations

from typing import Any

from ipython1.client.blocking import MultiEngineClient
from ipython1.client.magics import (  # noqa: F401 - this module's names before issue 13
    ParallelMagics,
    _installed,
    activate,
    parse_targets,
    unload_ipython_extension,
)


def load_ipython_extension(ipython: Any) -> None:
    """Install the magics; they connect to the default profile's controller on first use."""
    if id(ipython) not in _installed:
        activate(None, ipython, connect=MultiEngineClient)

"""Restarting an engine in place (mec.restart): a fresh process image, same pid and id.

The engine replaces itself with ``exec`` of its own command line, unchanged,
so the cluster's pid file (pid, start time, command line) still names it;
``IPYTHON1_ENGINE_ID`` tells the new image which id to ask for and that it
is one engine already started (no ``--fork``, no ``--pid-file`` again). Its
namespace, threads and connections go.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ipython1.cluster.supervisor import RESTART_ENV

IN_PLACE_ENV = "IPYTHON1_ENGINE_ID"  # set by exec_fresh: the id the new image asks for


def exec_fresh(engine_id: int, why: str = "restarted on request") -> None:
    """Replace this process with a fresh engine of the same id (never returns)."""
    os.environ[RESTART_ENV] = why
    os.environ[IN_PLACE_ENV] = str(engine_id)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, list(sys.orig_argv))


def take_in_place_id(options: Any, environ: Any = os.environ) -> None:
    """If this process is an engine restarted in place, set its options so: its
    old id, one engine, no pid file (the one ipcluster wrote still names it)."""
    engine_id = environ.pop(IN_PLACE_ENV, None)
    if engine_id is not None and engine_id.isdigit():
        options["engine-id"] = int(engine_id)
        options["fork"] = 1
        options["pid-file"] = None
        if "watch" in options:
            options["watch"] = False  # its watcher is still its parent

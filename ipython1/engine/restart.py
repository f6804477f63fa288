"""Restarting an engine in place (mec.restart): a fresh process image, same pid and id.

The engine replaces itself with ``exec``: the same command line, without the
options that only its first start needed (``--fork``, ``--pid-file``), and
asking for its own id (``--engine-id``). Its pid stays the same, so the
cluster's pid file still names it; its namespace, threads and connections go.
"""

from __future__ import annotations

import os
import sys

_FIRST_START_ONLY = {"--fork": True, "--pid-file": True, "--engine-id": True}


def fresh_argv(argv: list[str], engine_id: int) -> list[str]:
    """Return argv without first-start options, asking for engine_id."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _FIRST_START_ONLY:
            skip = "=" not in arg  # "--fork 2" takes the next word, "--fork=2" does not
            continue
        out.append(arg)
    return out + ["--engine-id", str(engine_id)]


def exec_fresh(engine_id: int, why: str = "restarted on request") -> None:
    """Replace this process with a fresh engine (never returns)."""
    from ipython1.cluster.supervisor import RESTART_ENV

    argv = fresh_argv(list(sys.orig_argv), engine_id)
    os.environ[RESTART_ENV] = why
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv[1:]])

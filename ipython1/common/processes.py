"""The cluster's own processes: how they are started, and how they are recognised.

Started: ``python -P`` never puts the directory it runs in on ``sys.path``;
a module planted there (``getpass.py`` in /tmp) would otherwise run as the
owner inside the controller or an engine.

Recognised: a pid file records, besides each pid, the process's start time
(field 22 of ``/proc/PID/stat``, in clock ticks since boot) and its command
line. After a crash the pid may belong to an unrelated process; only a
process whose start time and command line still match is signalled
(`verified`), and a file that names none is *stale* (`check`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ipython1.common.private import write_private

# -P (Python 3.11+): the script's or the current directory is not prepended to sys.path.
SAFE_PATH_FLAGS = ["-P"] if sys.version_info >= (3, 11) else []
_MAGIC = "# ipython1 pid file v2"


def python_module(module: str, *args: str, python: str | None = None) -> list[str]:
    """Return the argv that runs ``python -m module args`` without importing from cwd."""
    return [python or sys.executable, *SAFE_PATH_FLAGS, "-m", module, *args]


def safe_environ(env: dict[str, str] | None = None) -> dict[str, str]:
    """Return env (default os.environ) without PYTHONPATH entries relative to the cwd.

    An empty entry ("a::b", a trailing ":") or a relative one names the
    directory a process runs in, which is what -P keeps off sys.path.
    """
    env = dict(os.environ if env is None else env)
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if os.path.isabs(p)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env


@dataclass(frozen=True)
class Identity:
    """What tells one process from a later one with the same pid."""

    pid: int
    start: int  # clock ticks after boot (/proc/PID/stat field 22)
    cmdline: str  # argv joined by spaces

    def describe(self) -> str:
        return f"pid {self.pid} ({self.cmdline[:80] or '?'})"


def identity(pid: int) -> Identity | None:
    """Return the identity of a live process, or None if there is none (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    cmdline = " ".join(a.decode(errors="replace") for a in argv if a)
    return Identity(pid, int(fields[19]), cmdline)


def write_pid_file(path: Path, pids: list[int]) -> None:
    """Record pids with their start times and command lines (0600, atomically).

    The first line of each record is the bare pid, so older readers (and
    ``read_pid``) still find it.
    """
    lines = [_MAGIC]
    for pid in pids:
        ident = identity(pid)
        lines.append(json.dumps({"pid": pid, "start": ident.start if ident else None,
                                 "cmdline": ident.cmdline if ident else None}))
    # Line 2 onwards: one JSON record per pid; read_pid takes the first integer token.
    write_private(path, f"{pids[0] if pids else ''}\n" + "\n".join(lines) + "\n")


def recorded(path: Path) -> list[Identity | int]:
    """Return what a pid file recorded: an Identity per pid (a bare pid for old files)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    if _MAGIC not in text:
        return [int(t) for t in text.split() if t.isdigit()]
    out: list[Identity | int] = []
    for line in text.split(_MAGIC, 1)[1].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("pid"), int):
            if isinstance(entry.get("start"), int) and isinstance(entry.get("cmdline"), str):
                out.append(Identity(entry["pid"], entry["start"], entry["cmdline"]))
            else:
                out.append(entry["pid"])
    return out


def matches(record: Identity | int) -> bool:
    """Tell whether the recorded process is still the one running under its pid.

    A bare pid (a file written by an older version) counts only when its
    process looks like ours: its command line names ipython1.
    """
    pid = record.pid if isinstance(record, Identity) else record
    now = identity(pid)
    if now is None:
        return False
    if isinstance(record, Identity):
        return now.start == record.start and now.cmdline == record.cmdline
    return "ipython1" in now.cmdline


@dataclass
class PidFileStatus:
    """A pid file's processes: those still running, and the recorded ones that are not."""

    path: Path
    live: list[int]
    stale: list[str]  # descriptions of recorded processes that are gone or were replaced

    @property
    def is_stale(self) -> bool:
        """A file that names no live process of ours."""
        return self.path.exists() and not self.live


def check(path: Path) -> PidFileStatus:
    """Sort a pid file's processes into live (verified) and stale ones."""
    live, stale = [], []
    for record in recorded(path):
        pid = record.pid if isinstance(record, Identity) else record
        if matches(record):
            live.append(pid)
        else:
            now = identity(pid)
            stale.append(f"pid {pid} " + (f"is now another process ({now.cmdline[:60]!r})"
                                          if now else "is gone"))
    return PidFileStatus(path, live, stale)


def verified(pids: list[int], records: list[Identity | int]) -> list[int]:
    """Return those of pids whose process still matches its record (for a last check)."""
    by_pid = {(r.pid if isinstance(r, Identity) else r): r for r in records}
    return [p for p in pids if p in by_pid and matches(by_pid[p])]


def own_identity() -> Identity | None:
    """Return this process's identity."""
    return identity(os.getpid())

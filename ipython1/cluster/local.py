"""The processes ipcluster runs on this host: started, waited for, stopped by pid.

Each is started in its own session with its output in a log of the cluster
directory (whose tail explains an early exit), and stopped by pid, SIGTERM
then SIGKILL, checking first that the pid is still the process we started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ipython1.common.clusterdir import ClusterDir, pid_alive
from ipython1.common.private import open_private_log
from ipython1.common.processes import check, python_module, safe_environ

ENGINES_PID_FILE = "ipengines"
SUPERVISOR_PID_FILE = "ipsupervisor"


def _python_module(module: str, *args: str) -> list[str]:
    # Never import from the directory ipcluster runs in: anyone who can write
    # there (/tmp, a shared project) would run code as the owner.
    return python_module(module, *args)


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a process in its own session, output to log_path."""
    with open_private_log(log_path) as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=safe_environ())


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill_groups(leaders: list[int]) -> None:
    """SIGKILL what is left of the process groups we started (each _spawn leads one).

    Engines outlive a lost controller (they wait to rejoin), so a launcher that
    did not pass its signal on (a wrong mpiexec, a shell) must not leave them behind.
    """
    for pid in leaders:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def stop_pids(pids: list[int], grace: float,
              still_ours: Callable[[list[int]], list[int]] | None = None) -> list[int]:
    """SIGTERM pids, wait up to grace seconds, then SIGKILL; return the killed ones.

    still_ours, if given, filters pids down to those still the processes we
    mean, just before each signal (a pid may be reused meanwhile).
    """
    if still_ours is not None:
        pids = still_ours(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        _reap()
        time.sleep(0.05)
    killed = [p for p in pids if pid_alive(p)]
    if still_ours is not None:
        killed = still_ours(killed)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(p) for p in killed):
        _reap()
        time.sleep(0.05)
    return killed


def _reap() -> None:
    """Collect exited children of this process so they do not linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def engine_pids(cluster_dir: ClusterDir) -> list[int]:
    """Return the engines' pids that are still the processes recorded (never a stranger's)."""
    return check(cluster_dir.pid_file(ENGINES_PID_FILE)).live


def _stale_pid_files(cluster_dir: ClusterDir, out: IO[str]) -> None:
    """Report and remove pid files that name no process of ours (after a crash)."""
    for name in ("ipcontroller", ENGINES_PID_FILE):
        status = check(cluster_dir.pid_file(name))
        if status.is_stale:
            out.write(f"ipcluster: removed stale pid file {status.path} "
                      f"({'; '.join(status.stale) or 'no pid'})\n")
            status.path.unlink(missing_ok=True)


def _wait_for(condition: Callable[[], bool], timeout: float, failed: Callable[[], bool],
              why: Callable[[], str]) -> None:
    """Poll condition until true; raise early if failed() or at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            if condition():
                return
        except Exception:
            pass
        if failed():
            raise RuntimeError(why())
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)

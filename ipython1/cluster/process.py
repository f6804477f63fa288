"""Launchers whose engines hang off local processes (ssh clients, an srun step).

The processes run in their own sessions, outlive ``ipcluster start --daemon``
and are stopped by pid; their output goes to a log file in the cluster
directory, whose tail explains a process that exits too early.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipython1.cluster.launcher import tail
from ipython1.cluster.local import stop_pids
from ipython1.common.clusterdir import ClusterDir, pid_alive


class ProcessLauncher:
    """Track local processes that carry engines; subclasses say what they start."""

    name = "process"

    def __init__(self, cluster_dir: ClusterDir, pids: Sequence[dict[str, Any]] = ()) -> None:
        self.cluster_dir = cluster_dir
        # One record per process: pid, what it is (for messages), its log file.
        self.processes: list[dict[str, Any]] = [dict(p) for p in pids]
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, argv: list[str], what: str, log: Path, stdin_text: str | None = None,
              **record: Any) -> subprocess.Popen[bytes]:
        """Start argv in its own session, output to log, stdin_text (if any) on its stdin."""
        with open(log, "wb") as out:  # this start's output only: its tail explains a failure
            proc = subprocess.Popen(
                argv, stdout=out, stderr=out, start_new_session=True,
                stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL)
        if stdin_text is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(stdin_text.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it exited already; failure() reports its log
        self._popen[proc.pid] = proc
        self.processes.append({"pid": proc.pid, "what": what, "log": str(log), **record})
        return proc

    def pids(self) -> list[int]:
        return [p["pid"] for p in self.processes]

    def _exit_status(self, pid: int) -> int | None:
        proc = self._popen.get(pid)
        if proc is not None:
            return proc.poll()
        return None if pid_alive(pid) else -1

    def failure(self) -> str | None:
        for p in self.processes:
            status = self._exit_status(p["pid"])
            if status is not None:
                return (f"{p['what']} exited (status {status}) before its engines "
                        f"registered; its log {p['log']}:\n{tail(p['log'])}")
        return None

    def waiting(self) -> list[str]:
        return []

    def status(self) -> list[str]:
        return [f"{p['what']}: pid {p['pid']} "
                + ("running" if pid_alive(p["pid"]) else "exited") + f", log {p['log']}"
                for p in self.processes]

    def before_stop(self, grace: float) -> list[str]:
        """Ask the far end to stop its engines first (ssh does); return messages."""
        return []

    def stop(self, grace: float) -> list[str]:
        lines = self.before_stop(grace)
        live = [pid for pid in self.pids() if pid_alive(pid)]
        killed = stop_pids(live, grace)
        for proc in self._popen.values():
            proc.poll()
        if live:
            lines.append(f"{self.name}: stopped {len(live)} process(es)"
                         + (f" ({len(killed)} needed SIGKILL)" if killed else ""))
        return lines

    def state(self) -> dict[str, Any]:
        return {"pids": self.processes}

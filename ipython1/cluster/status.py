"""``ipcluster status``, ``logs`` and ``dashboard``: what a running cluster is doing."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO

from ipython1 import cluster
from ipython1.cluster.local import (
    _stale_pid_files,
)
from ipython1.common.clusterdir import ClusterDir
from ipython1.common.errors import KernelError
from ipython1.common.processes import check


def status(cluster_dir: ClusterDir, out: IO[str] = sys.stdout, as_json: bool = False,
           watch: bool = False, interval: float = 2.0) -> int:
    """Print the controller, each engine (host, pid, CPU, memory, queue), tasks and users."""
    # The controller's modules bring Twisted and Foolscap: only the commands that talk to
    # it import them.
    from ipython1.controller.monitor import format_snapshot
    from ipython1.controller.userdir import admin_call

    launcher = cluster.launcher_from_state(cluster_dir)
    for line in launcher.status() if launcher is not None and not as_json else []:
        out.write(f"{line}\n")  # what the launcher started: jobs, ssh clients
    _stale_pid_files(cluster_dir, out)  # reported and removed; never a traceback
    if not check(cluster_dir.pid_file("ipcontroller")).live:
        out.write(f"ipcluster: no controller is running for profile {cluster_dir.profile!r}\n")
        return 1
    try:
        while True:
            try:
                snap = admin_call(cluster_dir, "status")
            except KernelError as e:
                out.write(f"ipcluster: {e}\n")
                return 1
            text = json.dumps(snap, indent=1) + "\n" if as_json else format_snapshot(snap)
            if watch:
                out.write("\x1b[H\x1b[2J")  # home, clear: refresh in place
            out.write(text)
            out.flush()
            if not watch:
                return 0
            time.sleep(interval)  # polling a display; nothing to wait on
    except KeyboardInterrupt:
        return 0


def logs(cluster_dir: ClusterDir, engine: int | None = None, lines: int = 50,
         follow: bool = False, out: IO[str] = sys.stdout) -> int:
    """Print the last lines of the controller's log, or of an engine's (asked over the wire)."""
    if engine is None:
        path = cluster_dir.log_file("ipcontroller")
        if not path.exists():
            out.write(f"ipcluster: no controller log at {path}\n")
            return 1
        mec = None

        def fetch() -> list[str]:
            return path.read_text(errors="replace").splitlines()[-max(lines, 1000):]
    else:
        # Foolscap and the reactor: ipcluster loads them only to talk to a controller
        from ipython1.client.blocking import MultiEngineClient

        try:
            mec = MultiEngineClient(profile=cluster_dir.profile, timeout=10)
        except KernelError as e:
            out.write(f"ipcluster: {e}\n")
            return 1

        def fetch() -> list[str]:
            return list(mec.logs(engine, lines=max(lines, 1000)))
    try:
        shown: list[str] = []
        while True:
            try:
                current = fetch()
            except KernelError as e:
                out.write(f"ipcluster: {e}\n")
                return 1
            fresh = _after(shown, current) if shown else current[-lines:] if lines else []
            for line in fresh:
                out.write(line + "\n")
            out.flush()
            shown = current
            if not follow:
                return 0
            time.sleep(1.0)  # polling a log; nothing to wait on
    except KeyboardInterrupt:
        return 0
    finally:
        if mec is not None:
            mec.close()


def _after(shown: list[str], current: list[str]) -> list[str]:
    """Return the lines of current that come after what was shown (the logs overlap)."""
    if not shown:
        return current
    last = shown[-1]
    for i in range(len(current) - 1, -1, -1):
        if current[i] == last:
            return current[i + 1:]
    return current  # we fell behind the ring: show all we have


def dashboard(cluster_dir: ClusterDir, furl_file: str | None = None,
              out: IO[str] = sys.stdout) -> int:
    """Print the dashboard's URL with the token of a capability the caller holds."""
    # Foolscap and the reactor: ipcluster loads them only to talk to a controller
    from ipython1.controller.dashboard import dashboard_token, read_dashboard_url
    from ipython1.controller.userdir import ADMIN_FURL

    url = read_dashboard_url(cluster_dir)
    if url is None:
        out.write(f"ipcluster: no dashboard is running for profile {cluster_dir.profile!r} "
                  "(is the controller up? was it started with --no-dashboard?)\n")
        return 1
    path = Path(furl_file) if furl_file else cluster_dir.furl_file(ADMIN_FURL)
    try:
        furl = path.read_text()
    except OSError as e:
        out.write(f"ipcluster: cannot read the capability {path}: {e.strerror}\n")
        return 1
    out.write(f"{url}?token={dashboard_token(furl)}\n")
    return 0

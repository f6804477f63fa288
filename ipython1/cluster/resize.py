"""Resizing a running local cluster: ``ipcluster engines add N`` and ``engines remove IDS``.

Added engines are forked from one new ``ipengine`` process, as ``ipcluster
start`` does, and their pids join the cluster's engine pid file, so
``ipcluster stop`` ends them too. Removed engines are killed through the
controller (the multi-engine ``kill``), wherever they run; those of this host
that outlive it are signalled by pid, and leave the pid file.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ipython1.cluster import local as procs
from ipython1.common import processes
from ipython1.common.clusterdir import ClusterDir, pid_alive


def parse_ids(args: Any) -> list[int]:
    """Read engine ids written as '3 4', '3,4' or ranges '2-5'; raise ValueError."""
    ids: list[int] = []
    for arg in args:
        for part in str(arg).replace(",", " ").split():
            first, sep, last = part.partition("-")
            if not first.isdigit() or (sep and not last.isdigit()):
                raise ValueError(f"not an engine id or a range of them: {part!r}")
            ids.extend(range(int(first), int(last) + 1) if sep else [int(first)])
    if not ids:
        raise ValueError("name the engines to remove: ipcluster engines remove 3 4")
    return sorted(set(ids))


def _client(cluster_dir: ClusterDir, timeout: float) -> Any:
    # Foolscap and the reactor: ipcluster loads them only to talk to a controller
    from ipython1.client.blocking import MultiEngineClient

    if not cluster_dir.controller_running():
        raise RuntimeError(f"no controller is running for profile {cluster_dir.profile!r}; "
                           "run 'ipcluster start' first")
    return MultiEngineClient(profile=cluster_dir.profile, connect_timeout=min(timeout, 30))


def _add_pids(cluster_dir: ClusterDir, pids: list[int]) -> None:
    known = procs.engine_pids(cluster_dir)
    processes.write_pid_file(cluster_dir.pid_file(procs.ENGINES_PID_FILE),
                             known + [p for p in pids if p not in known])


def add_engines(cluster_dir: ClusterDir, n: int, timeout: float = 120.0) -> list[int]:
    """Start n more engines for the running cluster; return their ids once registered."""
    if n < 1:
        raise ValueError("the number of engines to add must be at least 1")
    mec = _client(cluster_dir, timeout)
    try:
        before = set(mec.get_ids())
        batch = cluster_dir.pid_file(f"ipengines-added-{os.getpid()}-{time.monotonic_ns()}")
        argv = procs._python_module(
            "ipython1.scripts.ipengine", "--profile", cluster_dir.profile,
            "--connect-timeout", str(timeout), "--fork", str(n), "--pid-file", str(batch))
        proc = procs._spawn(argv, cluster_dir.log_file("ipengine-console"))
        try:
            procs._wait_for(lambda: len(_read_pids(batch)) == n, timeout,
                                lambda: proc.poll() is not None,
                                lambda: f"the new engines exited with status {proc.returncode}"
                                f":\n{procs._tail(cluster_dir.log_file('ipengine-console'))}")
            pids = _read_pids(batch)
            _add_pids(cluster_dir, pids)
            batch.unlink(missing_ok=True)
            procs._wait_for(lambda: len(set(mec.get_ids()) - before) >= n, timeout,
                                lambda: not any(pid_alive(p) for p in pids),
                                lambda: "the new engines exited before registering")
        except Exception:
            procs.stop_pids(_read_pids(batch) or [proc.pid], grace=3)
            batch.unlink(missing_ok=True)
            raise
        return sorted(set(mec.get_ids()) - before)
    finally:
        mec.close()


def _read_pids(path: Any) -> list[int]:
    """The pids a pid file records (ipengine --pid-file writes them with their identity)."""
    return [r if isinstance(r, int) else r.pid for r in processes.recorded(path)]


def remove_engines(cluster_dir: ClusterDir, ids: list[int], grace: float = 10.0) -> list[int]:
    """Stop the engines with these ids; return them once the controller has let them go."""
    mec = _client(cluster_dir, 30.0)
    try:
        infos = mec.engine_info(targets=list(ids))  # unknown ids raise InvalidEngineID
        host = socket.gethostname()
        local = [int(i["pid"]) for i in infos if i.get("hostname") == host and i.get("pid")]
        mec.kill(targets=list(ids))
        procs._wait_for(lambda: not set(ids) & set(mec.get_ids()), grace,
                            lambda: False, lambda: "")
    finally:
        mec.close()
    procs.stop_pids([p for p in local if pid_alive(p)], grace)
    left = [p for p in procs.engine_pids(cluster_dir) if p not in local]
    processes.write_pid_file(cluster_dir.pid_file(procs.ENGINES_PID_FILE), left)
    return sorted(ids)

"""Shared fixtures: real clusters as processes over 127.0.0.1, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostgrid import HostGrid, unavailable_reason

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], Any], timeout: float = 30.0,
               message: str = "condition") -> Any:
    """Poll condition until it returns a true value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def pid_alive(pid: int) -> bool:
    from ipython1.common.clusterdir import pid_alive as alive

    return alive(pid)


def kill_all(pids: list[int], grace: float = 5.0) -> None:
    """TERM every pid, then KILL what is left after grace seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Cluster:
    """A controller and engines started as real processes in a private directory."""

    def __init__(self, root: Path, profile: str = "test") -> None:
        from ipython1.common.clusterdir import ClusterDir

        self.root = root
        self.profile = profile
        self.env = dict(os.environ, IPYTHON1_DIR=str(root), IPYTHON1_NONINTERACTIVE="1",
                        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.dir = ClusterDir(profile, root=root)
        self.pids: list[int] = []
        self.clients: list[Any] = []

    def ipcluster(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile", self.profile, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, n: int = 2, *extra: str) -> Cluster:
        proc = self.ipcluster("start", "-n", str(n), "--daemon", *extra)
        self.record_pids()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return self

    def record_pids(self) -> None:
        from ipython1.common.clusterdir import read_pid
        from ipython1.scripts.ipcluster import engine_pids

        for pid in [read_pid(self.dir.pid_file("ipcontroller")), *engine_pids(self.dir)]:
            if pid and pid not in self.pids:
                self.pids.append(pid)

    def start_engine(self, *extra: str, env: dict[str, str] | None = None
                     ) -> subprocess.Popen[bytes]:
        """Start one more engine process by hand (env: instead of the cluster's)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "ipython1.scripts.ipengine", "--profile", self.profile,
             *extra], env=env or self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pids.append(proc.pid)
        return proc

    @property
    def mec_furl(self) -> str:
        return str(self.dir.furl_file("ipcontroller-mec.furl"))

    @property
    def task_furl(self) -> str:
        return str(self.dir.furl_file("ipcontroller-task.furl"))

    def client(self, **kwargs: Any) -> Any:
        from ipython1.client.blocking import MultiEngineClient

        mec = MultiEngineClient(self.mec_furl, **kwargs)
        self.clients.append(mec)
        return mec

    def engine_pid(self, mec: Any, engine_id: int) -> int:
        return int(mec.apply(os.getpid, targets=engine_id))

    def stop(self) -> None:
        for mec in self.clients:
            try:
                mec.close()
            except Exception:
                pass
        self.record_pids()
        try:
            self.ipcluster("stop", "--grace", "5", timeout=60)
        finally:
            kill_all(self.pids)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start clusters on demand; every process is stopped at the end."""
    clusters: list[Cluster] = []

    def make(n: int = 2, *extra: str, profile: str = "test") -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(clusters)}", profile)
        clusters.append(cluster)
        return cluster.start(n, *extra)

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()


@contextlib.contextmanager
def running_cluster(root: Path, n: int) -> Iterator[Cluster]:
    """Start a cluster of n engines in root; stop every process of it on the way out."""
    cluster = Cluster(root)
    try:
        cluster.start(n)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 4-engine cluster shared by the tests of one module (tests must not kill it)."""
    with running_cluster(tmp_path_factory.mktemp("shared"), 4) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mec(shared_cluster: Cluster) -> Any:
    """A blocking multi-engine client of the module's shared cluster."""
    return shared_cluster.client(timeout=60)


@pytest.fixture(scope="module")
def tc(shared_cluster: Cluster) -> Iterator[Any]:
    """A blocking task client of the module's shared cluster."""
    from ipython1.client import blocking as client

    tc = client.TaskClient(shared_cluster.task_furl, timeout=60)
    yield tc
    tc.close()


def _grid(names: tuple[str, ...]) -> Iterator[HostGrid]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no grid of hosts: {reason}")
    with HostGrid(names) as grid:
        yield grid


@pytest.fixture(scope="module")
def host_grid() -> Iterator[HostGrid]:
    """Four namespace hosts (ctl, e1, e2, cli) shared by a module; see tests/hostgrid.py."""
    yield from _grid(("ctl", "e1", "e2", "cli"))


@pytest.fixture
def make_host_grid() -> Iterator[Callable[..., HostGrid]]:
    """Make grids of the given host names on demand; all are torn down at the end."""
    grids: list[Iterator[HostGrid]] = []

    def make(*names: str) -> HostGrid:
        grids.append(_grid(names or ("ctl", "e1", "e2", "cli")))
        return next(grids[-1])

    try:
        yield make
    finally:
        for grid in reversed(grids):
            next(grid, None)

"""A grid of test hosts on one machine: Linux network namespaces on a private bridge.

Each host is a network namespace with its own loopback, one interface
(``eth0``) on a bridge, a test address (``10.77.0.x/24`` and
``fd77::x/64``) that exists only inside the grid, and its own hostname (every
command runs under ``unshare --uts``). The bridge lives in a namespace of its
own, so the machine's own namespace gets no test address and no route to the
grid. The filesystem stays shared, as a cluster's home directory is.

Abstract Unix sockets belong to a network namespace, so a process on one grid
host cannot use another host's command channel or local data socket: every
byte between hosts takes the cross-host (TCP) path.

Host names resolve inside the grid: ``ip netns exec`` bind-mounts
``/etc/netns/<namespace>/hosts`` over ``/etc/hosts``, and the grid writes one
such file per host listing every grid host.

    with HostGrid(["ctl", "e1", "e2", "cli"]) as grid:
        proc = grid["e1"].popen(["ipengine", "--furl-file", path], env=env)
        print(grid["cli"].run(["hostname"]).stdout)      # "cli"

Everything a grid starts (every process in its namespaces, the namespaces,
the hosts files) is removed on exit, even after a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

NETNS_ETC = Path("/etc/netns")
SUBNET4 = "10.77.0"   # /24: hosts are .10, .11, ...
SUBNET6 = "fd77::"    # /64: hosts are fd77::10, fd77::11, ...
FIRST_HOST = 10


class GridUnavailable(Exception):
    """This machine cannot make a grid (not root, no iproute2, no namespaces)."""


def unavailable_reason() -> str | None:
    """Return why a grid cannot be made here, or None when it can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"{tool!r} is missing (apt-get install iproute2 util-linux hostname)"
    return None


def _ip(*args: str, netns: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise GridUnavailable(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


class Host:
    """One grid host: a network namespace, a hostname, and its addresses."""

    def __init__(self, grid: HostGrid, name: str, index: int) -> None:
        self.grid = grid
        self.name = name
        self.netns = f"{grid.prefix}-{name}"
        self.address = f"{SUBNET4}.{FIRST_HOST + index}"
        self.address6 = f"{SUBNET6}{FIRST_HOST + index}"
        self.processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} netns={self.netns}>"

    def command(self, argv: Sequence[str]) -> list[str]:
        """Return argv wrapped to run in this host (its namespace and hostname)."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]

    def popen(self, argv: Sequence[str], env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv in this host; the grid stops it on exit."""
        proc = subprocess.Popen(self.command(argv), env=env, **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 60, check: bool = False,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run argv in this host to completion; capture its output as text."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), env=env, timeout=timeout, check=check,
                              **kwargs)

    def pids(self) -> list[int]:
        """Return the pid of every process running in this host's namespace."""
        proc = _ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []

    def kill_all(self, sig: int = signal.SIGKILL) -> list[int]:
        """Send sig to every process in this host; return their pids."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids


class HostGrid:
    """Named hosts as network namespaces on one private bridge; a context manager.

    ``grid[name]`` (or ``grid.hosts``) gives each :class:`Host`. On exit every
    process in the grid's namespaces gets TERM, then KILL after ``grace``
    seconds, and the namespaces and hosts files are removed.
    """

    def __init__(self, names: Iterable[str] = ("ctl", "e1", "e2", "cli"),
                 grace: float = 5.0) -> None:
        names = list(names)
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be distinct and non-empty: {names}")
        if len(names) > 200:
            raise ValueError("at most 200 hosts")
        # Unique per grid, so concurrent grids (other tests, other users) never meet.
        self.prefix = f"ip1g{os.getpid()}x{time.monotonic_ns() % 100000}"
        self.bridge_netns = f"{self.prefix}-br"
        self.grace = grace
        self.hosts = {name: Host(self, name, i) for i, name in enumerate(names)}
        self._made: list[str] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.hosts.values())

    def __enter__(self) -> HostGrid:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Make the namespaces, the bridge, the veth pairs and the hosts files."""
        reason = unavailable_reason()
        if reason:
            raise GridUnavailable(reason)
        try:
            self._add_netns(self.bridge_netns)
            _ip("link", "add", "br0", "type", "bridge", netns=self.bridge_netns)
            _ip("link", "set", "br0", "up", netns=self.bridge_netns)
            hosts_lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
            for i, host in enumerate(self.hosts.values()):
                self._add_netns(host.netns)
                port = f"v{i}"
                _ip("link", "add", port, "type", "veth", "peer", "name", "eth0",
                    "netns", host.netns, netns=self.bridge_netns)
                _ip("link", "set", port, "master", "br0", "up", netns=self.bridge_netns)
                _ip("link", "set", "lo", "up", netns=host.netns)
                _ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
                _ip("-6", "addr", "add", f"{host.address6}/64", "dev", "eth0", "nodad",
                    netns=host.netns)
                _ip("link", "set", "eth0", "up", netns=host.netns)
                hosts_lines.append(f"{host.address} {host.name}")
            text = "\n".join(hosts_lines) + "\n"
            for host in self.hosts.values():
                etc = NETNS_ETC / host.netns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(text)
        except BaseException:
            self.stop()
            raise

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)

    def pids(self) -> list[int]:
        """Return the pid of every process in any grid host."""
        return [pid for host in self.hosts.values() for pid in host.pids()]

    def stop(self) -> None:
        """Stop every process in the grid, then remove its namespaces and files."""
        pids = self.pids()
        for proc in (p for host in self.hosts.values() for p in host.processes):
            if proc.poll() is None:
                pids.append(proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.05)
        for host in self.hosts.values():
            host.kill_all(signal.SIGKILL)
            for proc in host.processes:
                if proc.poll() is None:
                    proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        self._made.clear()
        try:
            NETNS_ETC.rmdir()  # only when no other grid (or admin) uses it
        except OSError:
            pass

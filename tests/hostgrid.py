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

import functools
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
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
    return _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    """Make and remove one namespace: a container may forbid it even to root."""
    name = f"ip1probe{os.getpid()}"
    made = _ip("netns", "add", name, check=False)
    _ip("netns", "del", name, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
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

    def python(self, env: dict[str, str] | None = None, setup: str = "") -> HostPython:
        """Start a Python process in this host that runs code sent by the test."""
        return HostPython(self, env, setup)

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


class RemoteFailure(Exception):
    """Code run by HostPython raised an exception that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str, text: str) -> None:
        super().__init__(f"{type_name}: {message}\n--- in the host ---\n{text}")
        self.type_name = type_name
        self.message = message
        self.text = text


class HostPython:
    """A Python process in a grid host, running code the test sends it.

    A test process cannot dial into the grid itself (its reactor thread, if
    any, lives in the machine's own namespace), so a client runs here:

        py = grid["cli"].python(env, setup="from ipython1.kernel import client")
        py.exec("mec = client.MultiEngineClient(furl)", furl=path)
        assert py.eval("mec.get_ids()") == [0, 1]

    Values travel pickled. An exception comes back as itself when it
    pickles, else as RemoteFailure with its type name, message and traceback.
    """

    def __init__(self, host: Host, env: dict[str, str] | None = None, setup: str = "") -> None:
        self.host = host
        self.proc = host.popen([sys.executable, __file__, "--serve-python"], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if setup:
            self.exec(setup)

    def _call(self, kind: str, source: str, names: dict[str, Any], timeout: float) -> Any:
        _send(self.proc.stdin, (kind, source, names, timeout))
        ok, value = _receive(self.proc.stdout)
        if ok:
            return value
        raise value if isinstance(value, BaseException) else RemoteFailure(*value)

    def exec(self, code: str, timeout: float = 120, **names: Any) -> None:
        """Run statements in this process's namespace (names are assigned first)."""
        self._call("exec", code, names, timeout)

    def eval(self, expression: str, timeout: float = 120, **names: Any) -> Any:
        """Evaluate an expression in this process's namespace; return its value."""
        return self._call("eval", expression, names, timeout)

    def close(self) -> None:
        """End the process (closing its stdin); kill it if it lingers."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _send(stream: Any, value: Any) -> None:
    data = pickle.dumps(value)
    stream.write(struct.pack("!Q", len(data)) + data)
    stream.flush()


def _receive(stream: Any) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the host's Python process exited")
    (size,) = struct.unpack("!Q", header)
    return pickle.loads(stream.read(size))


def _serve_python() -> None:
    """Run (kind, source, names, timeout) requests from stdin; answer on the original stdout."""
    import faulthandler
    import traceback

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the code prints goes to stderr, not into the replies
    requests = sys.stdin.buffer
    namespace: dict[str, Any] = {"__name__": "__host__"}
    while True:
        try:
            kind, source, names, timeout = _receive(requests)
        except EOFError:
            return
        namespace.update(names)
        faulthandler.dump_traceback_later(timeout + 30, exit=True)  # a hang ends loudly
        try:
            if kind == "eval":
                reply: tuple[bool, Any] = (True, eval(source, namespace))
            else:
                exec(source, namespace)
                reply = (True, None)
        except BaseException as e:  # noqa: BLE001  (sent back to the test)
            reply = (False, e)
            try:
                pickle.loads(pickle.dumps(e))
            except Exception:
                reply = (False, (type(e).__name__, str(e), traceback.format_exc()))
        finally:
            faulthandler.cancel_dump_traceback_later()
        try:
            _send(replies, reply)
        except Exception as e:  # the value does not pickle
            _send(replies, (False, (type(e).__name__, str(e), repr(reply[1])[:2000])))


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

    def __iter__(self) -> Iterator[Host]:
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


if __name__ == "__main__" and sys.argv[1:] == ["--serve-python"]:
    _serve_python()

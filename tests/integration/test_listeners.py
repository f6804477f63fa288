"""Every listener under a connection flood and under fuzzing (issue 16, item 4).

The controller runs with a small descriptor limit, so a flood reaches
EMFILE. After each attack the controller must be alive and serving, its
listeners still accepting, its memory back near where it started, and the
flood in its log. Bounded: a few thousand connections and frames, well
under a minute.
"""

from __future__ import annotations

import os
import random
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cluster, wait_until

FD_LIMIT = 256  # the controller's (and engines') RLIMIT_NOFILE in this module
FLOOD = 1200  # idle connections per flooded listener (the relay died at ~1,000)


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("listeners"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile", cluster.profile,
             "start", "-n", "1", "--daemon"], env=cluster.env, capture_output=True, text=True,
            timeout=120, preexec_fn=_limit_descriptors)
        cluster.record_pids()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield cluster
    finally:
        cluster.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def controller_pid(cluster: Cluster) -> int:
    return int(cluster.dir.pid_file("ipcontroller").read_text().split()[0])


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening(pid: int) -> tuple[list[int], list[str]]:
    """Return the TCP ports and abstract Unix socket names process pid listens on."""
    inodes = _socket_inodes(pid)
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            ports.append(int(fields[1].split(":")[1], 16))
    names = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("@ipython1-"):
            if fields[3] == "00010000":  # __SO_ACCEPTCON: a listening socket
                names.append(fields[7])
    return sorted(ports), names


def _peer(sock: socket.socket) -> int | None:
    try:
        return int(sock.getpeername()[1])
    except OSError:  # refused before connecting: closed already
        return None


def dashboard_port(cluster: Cluster) -> int | None:
    import json
    from urllib.parse import urlsplit

    try:
        url = json.loads((cluster.dir.security / "dashboard.json").read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None
    return urlsplit(url).port


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def connect(address: object, family: int = socket.AF_INET) -> socket.socket | None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect_ex(address if family == socket.AF_INET else "\0" + address[1:])
    except OSError:
        sock.close()
        return None
    return sock


def serving(cluster: Cluster, relayed: bool = True) -> bool:
    """Tell whether a new client connects, runs a command, and moves a large value."""
    import numpy as np

    from ipython1.client.blocking import MultiEngineClient

    os.environ["IPYTHON1_LOCAL_DATA"] = "0" if relayed else "1"
    try:
        with MultiEngineClient(cluster.mec_furl, timeout=30, connect_timeout=20) as mec:
            mec.execute("x = 1")
            big = np.arange(2**16, dtype=np.float64)  # 512 KiB: the data channel
            mec.push({"big": big}, targets=0)
            return bool((mec.pull("big", targets=0) == big).all())
    finally:
        os.environ.pop("IPYTHON1_LOCAL_DATA", None)


def all_addresses(cluster: Cluster) -> list[tuple[int, object]]:
    ports, names = listening(controller_pid(cluster))
    from ipython1.client.blocking import MultiEngineClient

    with MultiEngineClient(cluster.mec_furl, timeout=30) as mec:
        engine = mec.engine_info()[0]
    names.append(engine["local_data"]["socket"])
    ports.append(engine["direct_data"]["port"])  # the engine's data port (issue 17)
    return ([(socket.AF_INET, ("127.0.0.1", p)) for p in ports]
            + [(socket.AF_UNIX, n) for n in names])


def test_idle_connection_floods_leave_every_listener_accepting(cluster: Cluster) -> None:
    pid = controller_pid(cluster)
    assert serving(cluster)
    ports, names = listening(pid)
    # Foolscap port, relay (and the web dashboard's, when there is one); command channel
    assert len(ports) >= 2 and len(names) == 1
    before = rss_kb(pid)
    flood: list[socket.socket] = []
    try:
        for family, address in [(socket.AF_INET, ("127.0.0.1", p)) for p in ports] + [
                (socket.AF_UNIX, n) for n in names]:
            for _ in range(FLOOD):
                sock = connect(address, family)
                if sock is not None:
                    flood.append(sock)
        assert len(flood) > (len(ports) + 1) * FLOOD * 0.9
        # Unauthenticated connections are closed by the controller within its deadline
        # (the Foolscap port's and the relay's; the dashboard has its own idle timeout).
        by_port: dict[int, list[socket.socket]] = {}
        for sock in flood:
            port = _peer(sock) if sock.family == socket.AF_INET else None
            if port is not None:
                by_port.setdefault(port, []).append(sock)
        guarded = [p for p in ports if p != dashboard_port(cluster)]
        sample = [s for p in guarded for s in by_port.get(p, [])[:20]]
        assert len(sample) >= 20 * 2

        def closed_by_peer(sock: socket.socket) -> bool:
            try:
                return sock.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        wait_until(lambda: all(closed_by_peer(s) for s in sample), 20,
                   "the controller to close idle unauthenticated connections")
    finally:
        for sock in flood:
            sock.close()
    assert os.path.exists(f"/proc/{pid}")
    wait_until(lambda: serving(cluster), 30, "the controller to serve again")

    def reported(*names: str) -> bool:
        log = cluster.dir.log_file("ipcontroller").read_text()
        return all(_first_line_naming(log, name) for name in names)

    # Each guard reports from its own thread: the lines may reach the log a little later.
    wait_until(lambda: reported("relay", "Foolscap port"), 20, "both floods in the log")
    assert rss_kb(pid) - before < 50_000


def _first_line_naming(log: str, name: str) -> str:
    """The first flood report of the listener whose name starts with name ("" if none)."""
    return next((line for line in log.splitlines()
                 if f"{name} " in line and "possible connection flood" in line), "")


def test_fuzzing_every_listener_leaves_the_controller_serving(cluster: Cluster) -> None:
    pid = controller_pid(cluster)
    rng = random.Random(16)
    addresses = all_addresses(cluster)
    # Foolscap port, relay, command channel, an engine's data socket and data port
    # (and the dashboard's)
    assert len(addresses) >= 5
    assert serving(cluster, relayed=True) and serving(cluster, relayed=False)
    before = rss_kb(pid)
    deadline = time.monotonic() + 25
    frames = 0
    for round_ in range(60):
        for family, address in addresses:
            if time.monotonic() > deadline:
                break
            sock = connect(address, family)
            if sock is None:
                continue
            sock.setblocking(True)
            sock.settimeout(0.5)
            try:
                for _ in range(rng.randint(1, 4)):
                    sock.sendall(_fuzz_frame(rng, round_))
                    frames += 1
            except OSError:
                pass  # closed on us: fine
            finally:
                sock.close()
    assert frames > 300
    assert os.path.exists(f"/proc/{pid}")
    wait_until(lambda: serving(cluster, relayed=True), 30, "relayed transfers after fuzzing")
    assert serving(cluster, relayed=False)
    wait_until(lambda: rss_kb(pid) - before < 30_000, 10,
               f"controller memory back near {before} kB")


def _fuzz_frame(rng: random.Random, n: int) -> bytes:
    """Random bytes, or something shaped like what a listener expects."""
    kind = n % 6
    if kind == 0:  # plain noise
        return rng.randbytes(rng.randint(1, 4096))
    if kind == 1:  # Foolscap's opening, then noise
        return b"GET /id/" + rng.randbytes(32).hex().encode() + b" HTTP/1.1\r\n\r\n" + \
            rng.randbytes(rng.randint(0, 512))
    if kind == 2:  # a length prefix declaring a large frame (checked before buffering)
        return struct.pack("!I", rng.choice([2**31 - 1, 2**24, 65536])) + rng.randbytes(64)
    if kind == 3:  # a small msgpack-ish frame
        body = rng.randbytes(rng.randint(0, 200))
        return struct.pack("!I", len(body)) + body
    if kind == 4:  # a pairing id / transfer head of the right size, wrong values
        return rng.randbytes(16) + rng.randbytes(rng.choice([0, 53, 200]))
    return b"\x16\x03\x01" + rng.randbytes(rng.randint(0, 300))  # a TLS record header

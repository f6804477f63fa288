"""Addresses and ports on one host: IPv6 loopback, fixed ports, and clear refusals."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ipython1.kernel import datachannel
from tests.conftest import Cluster


def free_port(family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1)")
def test_cluster_on_ipv6_loopback_with_fixed_ports(tmp_path: Path) -> None:
    port, relay_port = free_port(socket.AF_INET6, "::1"), free_port(socket.AF_INET6, "::1")
    cluster = Cluster(tmp_path)
    # Foolscap and the relay, not the same-host shortcuts: what another host would use.
    cluster.env.update(IPYTHON1_LOCAL_DATA="0", IPYTHON1_COMMAND_CHANNEL="0",
                       IPYTHON1_DIRECT_DATA="0")
    try:
        cluster.start(1, "--ip", "::1", "--port", str(port), "--relay-port", str(relay_port))
        furl = Path(cluster.mec_furl).read_text().strip()
        assert furl.split("@", 1)[1].split("/", 1)[0] == f"tcp:[::1]:{port}"
        mec = cluster.client(timeout=60)
        before = datachannel.TRANSFERS["relay"]
        mec.push({"a": np.arange(2**20)})  # 8 MiB: through the relay on [::1]:relay_port
        assert int(mec.pull("a", targets=0).sum()) == sum(range(2**20))
        assert datachannel.TRANSFERS["relay"] - before == 2
        log = (cluster.dir.path / "log" / "ipcontroller.log").read_text()
        assert f"data relay on port {relay_port}" in log
    finally:
        cluster.stop()


def ipcontroller(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cluster = Cluster(tmp_path)
    return subprocess.run([sys.executable, "-m", "ipython1.scripts.ipcontroller",
                           "--profile", "busy", *args], env=cluster.env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("option", ["--port", "--relay-port"])
def test_a_busy_fixed_port_stops_the_controller_with_a_clear_error(
        tmp_path: Path, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = ipcontroller(tmp_path, option, str(port))
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in proc.stderr and "in use" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--location", "0.0.0.0"], "a wildcard cannot be dialled"),
    (["--location", "head:99999"], "the port must be a number from 1 to 65535"),
    (["--port", "70000"], "--port must be from 0"),
])
def test_bad_addresses_are_refused_before_anything_starts(
        tmp_path: Path, args: list[str], message: str) -> None:
    proc = ipcontroller(tmp_path, *args)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_ipengine_refuses_a_furl_that_is_not_one(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "ipython1.scripts.ipengine",
                           "--furl", "/some/file.furl"], env=cluster.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "to name a file, use --furl-file" in proc.stderr

"""The grid of test hosts: own hostnames, reachable only from inside, torn down always."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.hostgrid import HostGrid, RemoteFailure, unavailable_reason

SERVE_ONCE = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen()
print('listening', flush=True)
c, _ = s.accept(); c.sendall(socket.gethostname().encode()); c.close()
"""
DIAL = """
import socket, sys
print(socket.create_connection((sys.argv[1], 7777), timeout=3).recv(99).decode())
"""


@pytest.fixture(scope="module")
def grid() -> HostGrid:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with HostGrid(["a", "b"]) as grid:
        yield grid


def serve(host, bind: str) -> subprocess.Popen[str]:
    proc = host.popen([sys.executable, "-c", SERVE_ONCE, bind], stdout=subprocess.PIPE,
                      text=True)
    assert proc.stdout.readline() == "listening\n"
    return proc


def test_each_host_has_its_name_and_address(grid: HostGrid) -> None:
    for host in grid:
        assert host.run(["hostname"]).stdout.strip() == host.name
        assert host.address in host.run(["ip", "-4", "addr", "show", "eth0"]).stdout


@pytest.mark.parametrize("dial", ["a", "10.77.0.10", "fd77::10"])
def test_hosts_reach_each_other_by_name_ipv4_and_ipv6(grid: HostGrid, dial: str) -> None:
    server = serve(grid["a"], "::" if ":" in dial else "0.0.0.0")
    out = grid["b"].run([sys.executable, "-c", DIAL, dial], timeout=10)
    assert out.stdout.strip() == "a", out.stderr
    server.wait(timeout=5)


def test_the_machine_gets_no_grid_address_or_route(grid: HostGrid) -> None:
    # Checked, not dialled: a packet to the grid from here would go to the default route.
    for argv in (["ip", "addr"], ["ip", "route"], ["ip", "-6", "route"]):
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        assert "10.77.0." not in out and "fd77:" not in out, out


def test_abstract_unix_sockets_stay_in_their_host(grid: HostGrid) -> None:
    listen = ("import socket; s = socket.socket(socket.AF_UNIX); s.bind('\\0ip1grid-probe');"
              "s.listen(); print('listening', flush=True); s.accept()")
    dial = "import socket; socket.socket(socket.AF_UNIX).connect('\\0ip1grid-probe')"
    server = grid["a"].popen([sys.executable, "-c", listen], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "listening\n"
        assert grid["a"].run([sys.executable, "-c", dial]).returncode == 0
        assert grid["b"].run([sys.executable, "-c", dial]).returncode != 0
    finally:
        server.kill()
        server.wait()


def test_grid_is_torn_down_after_a_failure() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pytest.raises(RuntimeError), HostGrid(["x"]) as grid:
        sleeper = grid["x"].popen(["sleep", "600"])
        netns = grid["x"].netns
        raise RuntimeError("test body failed")
    assert sleeper.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert netns not in listed and grid.bridge_netns not in listed


def test_host_python_runs_code_in_the_host_and_returns_values_and_errors(grid: HostGrid) -> None:
    py = grid["b"].python(setup="import socket")
    try:
        py.exec("print('not in the replies'); x = n * 2", n=21)
        assert py.eval("(socket.gethostname(), x)") == ("b", 42)
        with pytest.raises(ZeroDivisionError):
            py.eval("1 / 0")
        with pytest.raises(RemoteFailure, match="cannot pickle"):
            py.eval("socket.socket()")
        assert py.eval("x") == 42  # still serving after errors
    finally:
        py.close()

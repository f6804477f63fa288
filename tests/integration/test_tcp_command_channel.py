"""The command channel across hosts (TLS on TCP), end to end on a grid of hosts.

The controller runs on ctl, two engines on e1, the client on cli
(tests/hostgrid.py): no Unix socket is shared, so the channel takes the
controller's TLS port. Host e2 has a firewall that drops new connections to
that port: its engine and client stay on Foolscap.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from ipython1.transport import tcpchannel
from tests.conftest import ROOT, wait_until
from tests.hostgrid import HostGrid, HostPython

PROFILE = "tcp"
COMMAND_PORT = 41102
CLIENT_SETUP = """
import os, time
from ipython1.client import blocking as client
from tests.integration.test_command_channel import _every_op, _exercise, _exercise_tasks

class Remote:
    '''What the conformance run of test_command_channel asks of its cluster.'''
    def __init__(self, security):
        self.mec_furl = security + "/ipcontroller-mec.furl"
        self.task_furl = security + "/ipcontroller-task.furl"
    def client(self, **kwargs):
        return client.MultiEngineClient(self.mec_furl, timeout=60, **kwargs)
    def engine_pid(self, mec, engine_id):
        return int(mec.apply(os.getpid, targets=engine_id))
"""


class Grid:
    def __init__(self, grid: HostGrid, root: Path) -> None:
        self.grid = grid
        self.env = dict(os.environ, IPYTHON1_DIR=str(root), IPYTHON1_NONINTERACTIVE="1",
                        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.security = str(root / f"cluster_{PROFILE}" / "security")

    def command(self, script: str, *args: str) -> list[str]:
        return [sys.executable, "-m", f"ipython1.scripts.{script}", "--profile", PROFILE, *args]

    def client(self, host: str) -> HostPython:
        py = self.grid[host].python(self.env, CLIENT_SETUP)
        py.exec("cluster = Remote(security)", security=self.security)
        return py

    def transports(self, py: HostPython) -> dict[int, str]:
        return {i["engine_id"]: i["command_transport"]
                for i in py.eval("cluster.client().engine_info()")}


@pytest.fixture(scope="module")
def grid(host_grid: HostGrid, tmp_path_factory: pytest.TempPathFactory) -> Grid:
    hosts = host_grid
    g = Grid(hosts, tmp_path_factory.mktemp("tcpchannel"))
    hosts["ctl"].popen(g.command("ipcontroller", "--ip", hosts["ctl"].address,
                                 "--command-port", str(COMMAND_PORT)), env=g.env)
    wait_until(lambda: os.path.exists(g.security + "/ipcontroller-task.furl"), 60,
               "the controller's FURL files")
    hosts["e1"].popen(g.command("ipengine", "--fork", "2"), env=g.env)
    return g


def test_engines_and_a_client_on_other_hosts_take_the_tls_channel(grid: Grid) -> None:
    py = grid.client("cli")
    try:
        py.exec("mec = cluster.client()")
        wait_until(lambda: len(py.eval("mec.get_ids()")) == 2, 60, "the engines on e1")
        wait_until(lambda: set(grid.transports(py).values()) == {"tcp-channel"}, 20,
                   "every engine on the TLS channel")
        assert py.eval("mec.local_channel") is True  # this client's calls take it too
        status = grid.grid["ctl"].run(grid.command("ipcluster", "status", "--json"),
                                      env=grid.env)
        assert status.returncode == 0, status.stderr
        snapshot = json.loads(status.stdout)
        assert snapshot["controller"]["ports"]["commands"] == COMMAND_PORT
        assert {e["transport"] for e in snapshot["engines"]} == {"tcp-channel"}
        # Every op, the task farm's calls, interrupts, and an engine's death
        # (test_command_channel's conformance run, here across hosts over TLS).
        py.exec("_every_op(mec, mec.get_ids())\n"
                "_exercise_tasks(cluster, local=True)")
        # Frames much larger than a TLS record, both ways.
        assert py.eval("len(mec.execute(\"print('x' * (8 * 2**20), end='')\", "
                       "targets=0).stdout)") == 8 * 2**20
        py.exec("_exercise(cluster)", timeout=180)  # kills engine 1 on the way
        wait_until(lambda: py.eval("mec.get_ids()") == [0], 30, "the dead engine gone")
        py.exec("mec.kill(targets=0)")
        wait_until(lambda: py.eval("mec.get_ids()") == [], 30, "the killed engine gone")
    finally:
        py.close()


@pytest.mark.skipif(not os.path.exists("/usr/sbin/nft"), reason="needs nftables (apt nftables)")
def test_a_firewalled_port_leaves_engines_and_clients_on_foolscap(grid: Grid) -> None:
    e2 = grid.grid["e2"]
    for rule in (["add", "table", "inet", "fw"],
                 ["add", "chain", "inet", "fw", "out",
                  "{ type filter hook output priority 0; }"],
                 ["add", "rule", "inet", "fw", "out", "tcp", "dport", str(COMMAND_PORT),
                  "drop"]):
        done = e2.run(["nft", *rule])
        assert done.returncode == 0, done.stderr
    watcher = grid.client("cli")
    py = None
    try:
        watcher.exec("mec = cluster.client()")
        before = set(watcher.eval("mec.get_ids()"))
        e2.popen(grid.command("ipengine"), env=grid.env)
        wait_until(lambda: set(watcher.eval("mec.get_ids()")) - before, 60, "e2's engine")
        (engine,) = set(watcher.eval("mec.get_ids()")) - before
        # Its commands run at once, over Foolscap, while its channel cannot connect...
        watcher.exec("mec.execute('a = 1', targets=engine)", engine=engine)
        assert watcher.eval("mec.pull('a', targets=engine)", engine=engine) == 1
        # ...and the channel never attaches (it gives up after CONNECT_TIMEOUT).
        end = time.monotonic() + tcpchannel.CONNECT_TIMEOUT + 1
        while time.monotonic() < end:
            assert grid.transports(watcher)[engine] == "foolscap"
        assert watcher.eval("mec.pull('a', targets=engine)", engine=engine) == 1
        # A client there gives up on the channel within its timeout, and works.
        py = grid.client("e2")
        start = time.monotonic()
        py.exec("mec = cluster.client()")
        assert time.monotonic() - start < tcpchannel.CONNECT_TIMEOUT + 10
        assert py.eval("mec.local_channel") is False
        assert py.eval("mec.pull('a', targets=engine)", engine=engine) == 1
        py.exec("mec.kill(targets=engine)", engine=engine)
    finally:
        e2.run(["nft", "delete", "table", "inet", "fw"])
        watcher.close()
        if py is not None:
            py.close()

"""Large values between a client and engines on other hosts: straight to the engine's data port.

A grid of network-namespace hosts (tests/hostgrid.py): controllers on ctl,
engines on e1 and e2, the client on cli. Two controllers of their own
profiles: ``enc`` as shipped (TLS to the engine), ``plain`` started by
``ipcluster start --data-encryption=off`` (its engine on ctl). The client's
`TRANSFERS` counter says which path each transfer took.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until
from tests.hostgrid import HostGrid, HostPython, unavailable_reason

CLIENT_SETUP = """
import numpy as np
from ipython1.kernel import client, datachannel
from ipython1.kernel.datachannel import TransferError

def counts():
    return dict(datachannel.TRANSFERS)

def grown(before):
    now = counts()
    return {k: now[k] - before.get(k, 0) for k in now if now[k] != before.get(k, 0)}

def ticket(mec, engine_id, size, route="direct"):
    answer = mec._call(mec._async._remote, "open_transfer", engine_id, "upload",
                       b"t" * 16, [size], "", route)
    return dict(mec._async._ticket(answer), blob_id=b"t" * 16)
"""


class Grid:
    def __init__(self, grid: HostGrid, root: Path) -> None:
        self.grid = grid
        self.root = root
        self.env = dict(os.environ, IPYTHON1_DIR=str(root), IPYTHON1_NONINTERACTIVE="1",
                        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def furl(self, profile: str, name: str) -> str:
        return str(self.root / f"cluster_{profile}" / "security" / f"ipcontroller-{name}.furl")

    def start(self, host: str, script: str, *args: str) -> subprocess.Popen[bytes]:
        return self.grid[host].popen([sys.executable, "-m", f"ipython1.scripts.{script}", *args],
                                     env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no grid of hosts: {reason}")
    with HostGrid(["ctl", "e1", "e2", "cli"]) as grid:
        g = Grid(grid, tmp_path_factory.mktemp("direct"))
        g.start("ctl", "ipcontroller", "--profile", "enc", "--location", "ctl")
        # ipcluster passes --data-encryption on; its engine runs on ctl, the client on cli.
        g.start("ctl", "ipcluster", "start", "--profile", "plain", "-n", "1", "--location", "ctl",
                "--data-encryption=off")
        for profile in ("enc", "plain"):
            furl = g.furl(profile, "engine")
            wait_until(lambda f=furl: os.path.exists(f), 30, f"{profile}'s FURL files")
        g.start("e1", "ipengine", "--profile", "enc")
        g.start("e2", "ipengine", "--profile", "enc")
        yield g


@pytest.fixture(scope="module")
def py(hosts: Grid) -> Iterator[HostPython]:
    client = hosts.grid["cli"].python(hosts.env, CLIENT_SETUP)
    try:
        client.exec("enc = client.MultiEngineClient(enc_furl, timeout=60)\n"
                    "plain = client.MultiEngineClient(plain_furl, timeout=60)",
                    enc_furl=hosts.furl("enc", "mec"), plain_furl=hosts.furl("plain", "mec"))
        wait_until(lambda: len(client.eval("enc.get_ids()")) == 2
                   and len(client.eval("plain.get_ids()")) == 1, 60, "3 engines")
        yield client
    finally:
        client.close()


def test_push_pull_scatter_gather_go_straight_to_the_engines(py: HostPython) -> None:
    py.exec("before = counts()\n"
            "a = np.random.default_rng(1).random(2**20)\n"  # 8 MiB
            "enc.push({'a': a})\n"
            "pulled = enc.pull('a')\n"
            "enc.scatter('s', a)\n"
            "gathered = enc.gather('s')")
    assert py.eval("all(np.array_equal(p, a) for p in pulled)")
    assert py.eval("np.array_equal(gathered, a)")
    # 2 engines: push 2 up, pull 2 down, scatter 2 up, gather 2 down; nothing relayed.
    assert py.eval("grown(before)") == {"direct": 8}


def test_the_data_port_listens_only_where_the_controller_reached_the_engine(
        hosts: Grid, py: HostPython) -> None:
    e1 = hosts.grid["e1"]
    info = next(i for i in py.eval("enc.engine_info()") if i["hostname"] == "e1")
    port = info["direct_data"]["port"]
    assert info["direct_data"]["host"] == e1.address
    listening = e1.run(["ss", "-Htln"]).stdout
    assert f"{e1.address}:{port} " in listening, listening
    assert f"*:{port} " not in listening and f"0.0.0.0:{port} " not in listening


def test_an_unreachable_engine_port_falls_back_to_the_relay(hosts: Grid, py: HostPython) -> None:
    e2 = hosts.grid["e2"].address
    engine = py.eval("[i['engine_id'] for i in enc.engine_info() if i['hostname'] == 'e2'][0]")
    # As behind a firewall: cli may talk to ctl, not to e2.
    hosts.grid["cli"].run(["ip", "route", "add", "prohibit", f"{e2}/32"], check=True)
    try:
        py.exec("fresh = client.MultiEngineClient(enc_furl, timeout=60)\nbefore = counts()",
                enc_furl=hosts.furl("enc", "mec"))
        py.exec(f"b = np.arange(2**18.0)\nfresh.push({{'b': b}}, targets={engine})")
        assert py.eval(f"np.array_equal(fresh.pull('b', targets={engine}), b)")
        assert py.eval("grown(before)") == {"relay": 2}
        assert py.eval(f"{engine} in fresh._async._no_direct")  # remembered: no second try
    finally:
        hosts.grid["cli"].run(["ip", "route", "del", "prohibit", f"{e2}/32"])
        py.exec("fresh.close()")


def test_unencrypted_only_where_the_controller_allows_it(py: HostPython) -> None:
    py.exec("before = counts()\nc = np.arange(2**18.0)\nplain.push({'c': c})")
    assert py.eval("np.array_equal(plain.pull('c', targets=0), c)")
    assert py.eval("grown(before)") == {"direct-unencrypted": 2}
    assert py.eval("ticket(plain, 0, 10)['plain']") is True
    # A controller as shipped never hands out an unencrypted ticket, and its
    # engines refuse a client that goes unencrypted anyway.
    forged = "dict(ticket(enc, 0, 10), plain=True)"
    assert py.eval(f"{forged}['tubid'] != ''")
    assert py.eval("ticket(enc, 0, 10)['plain']") is False
    py.exec("try:\n"
            f"    datachannel.client_transfer({forged}, frames=[b'x' * 10])\n"
            "    refused = None\n"
            "except TransferError as e:\n"
            "    refused = str(e)")
    assert "unencrypted transfers are off" in py.eval("refused")


@pytest.mark.parametrize("mec", ["enc", "plain"])
def test_a_wrong_secret_is_refused(py: HostPython, mec: str) -> None:
    py.exec("try:\n"
            f"    datachannel.client_transfer(dict(ticket({mec}, 0, 10), secret=b's' * 32),\n"
            "                                frames=[b'x' * 10])\n"
            "    refused = None\n"
            "except TransferError as e:\n"
            "    refused = str(e)")
    assert "wrong transfer secret" in py.eval("refused")

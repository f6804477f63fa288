"""Large values between a client and engines on other hosts: straight to the engine's data port.

A grid of network-namespace hosts (tests/hostgrid.py): controllers on ctl,
engines on e1 and e2, the client on cli. Three controllers of their own
profiles: ``enc`` as shipped (sealed frames after a TLS handshake), ``tls``
and ``plain`` started by ``ipcluster start --data-encryption=tls`` and
``=off`` (their engine on ctl). The client's `TRANSFERS` counter says which
path each transfer took. `Tap` stands for the wire: the client's data
connections go through it, which records every byte and can alter the
sealed frames as an attacker on the network could.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until
from tests.hostgrid import HostGrid, HostPython

CLIENT_SETUP = """
import socket
import numpy as np
from ipython1.client import transfer
from ipython1.kernel import client, datachannel
from ipython1.kernel.datachannel import TransferError

def counts():
    return dict(datachannel.TRANSFERS)

def grown(before):
    now = counts()
    return {k: now[k] - before.get(k, 0) for k in now if now[k] != before.get(k, 0)}

class Tap:
    # A client data socket whose bytes are recorded, and whose frames may be tampered
    # with: change(n, frame) gives the bytes to send for the n-th bulk frame (from 0),
    # or None to close the connection there.

    sent, received, change = bytearray(), bytearray(), None

    def __init__(self, sock):
        self._sock, self._bulk = sock, 0

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._sock.close()

    def sendall(self, data):
        data = bytes(data)
        if Tap.change is not None and len(data) >= 2**19:  # a bulk frame, not the handshake
            data, self._bulk = Tap.change(self._bulk, data), self._bulk + 1
            if data is None:  # the stream ends here: the engine must not take it as whole
                self._sock.shutdown(socket.SHUT_WR)
                Tap.change = lambda n, frame: b""
                return
        Tap.sent += data
        if data:
            self._sock.sendall(data)

    def recv_into(self, view, nbytes=0):
        n = self._sock.recv_into(view, nbytes)
        Tap.received += bytes(view[:n])
        return n

    def recv(self, nbytes, *flags):
        data = self._sock.recv(nbytes, *flags)
        Tap.received += data
        return data


def tapped(change=None):
    Tap.sent, Tap.received, Tap.change = bytearray(), bytearray(), change


transfer.connect = lambda *a, _connect=transfer.connect: Tap(_connect(*a))


def flip(n, frame):
    return frame[:100] + bytes([frame[100] ^ 1]) + frame[101:] if n == 1 else frame


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
def hosts(host_grid: HostGrid, tmp_path_factory: pytest.TempPathFactory) -> Grid:
    g = Grid(host_grid, tmp_path_factory.mktemp("direct"))
    g.start("ctl", "ipcontroller", "--profile", "enc", "--location", "ctl")
    # ipcluster passes --data-encryption on; its engine runs on ctl, the client on cli.
    for profile, mode in (("plain", "off"), ("tls", "tls")):
        g.start("ctl", "ipcluster", "start", "--profile", profile, "-n", "1", "--location",
                "ctl", f"--data-encryption={mode}")
    for profile in ("enc", "plain", "tls"):
        furl = g.furl(profile, "engine")
        wait_until(lambda f=furl: os.path.exists(f), 30, f"{profile}'s FURL files")
    g.start("e1", "ipengine", "--profile", "enc")
    g.start("e2", "ipengine", "--profile", "enc")
    return g


@pytest.fixture(scope="module")
def py(hosts: Grid) -> Iterator[HostPython]:
    client = hosts.grid["cli"].python(hosts.env, CLIENT_SETUP)
    try:
        client.exec("enc = client.MultiEngineClient(enc_furl, timeout=60)\n"
                    "plain = client.MultiEngineClient(plain_furl, timeout=60)\n"
                    "tls = client.MultiEngineClient(tls_furl, timeout=60)",
                    enc_furl=hosts.furl("enc", "mec"), plain_furl=hosts.furl("plain", "mec"),
                    tls_furl=hosts.furl("tls", "mec"))
        wait_until(lambda: len(client.eval("enc.get_ids()")) == 2
                   and len(client.eval("plain.get_ids()")) == 1
                   and len(client.eval("tls.get_ids()")) == 1, 60, "4 engines")
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


@pytest.mark.parametrize(("mec", "path"), [("tls", "direct-tls"),
                                           ("plain", "direct-unencrypted")])
def test_push_pull_scatter_gather_in_the_other_modes(py: HostPython, mec: str,
                                                     path: str) -> None:
    py.exec("before = counts()\n"
            "a = np.random.default_rng(2).random(2**22)\n"  # 32 MiB: in stripes
            f"{mec}.push({{'a': a}})\n"
            f"pulled = {mec}.pull('a')\n"
            f"{mec}.scatter('s', a[:2**20])\n"
            f"gathered = {mec}.gather('s')")
    assert py.eval("np.array_equal(pulled[0], a)")
    assert py.eval("np.array_equal(gathered, a[:2**20])")
    assert py.eval("grown(before)") == {path: 4}


@pytest.mark.parametrize(("mec", "mode"), [("enc", "sealed"), ("tls", "tls"), ("plain", "off")])
def test_engine_info_and_status_say_how_values_cross_hosts(hosts: Grid, py: HostPython,
                                                            mec: str, mode: str) -> None:
    assert {i["direct_data"]["encryption"] for i in py.eval(f"{mec}.engine_info()")} == {mode}
    status = hosts.grid["ctl"].run([sys.executable, "-m", "ipython1.scripts.ipcluster",
                                    "status", "--json", "--profile", mec], env=hosts.env)
    assert json.loads(status.stdout)["controller"]["data_encryption"] == mode


PATTERN = "np.frombuffer(b'IPYTHON1-PLAINTEXT-' * (2**23 // 19), np.uint8)"


@pytest.mark.parametrize(("mec", "shown"), [("enc", False), ("tls", False), ("plain", True)])
def test_the_wire_carries_no_plaintext_unless_encryption_is_off(py: HostPython, mec: str,
                                                                shown: bool) -> None:
    py.exec(f"tapped()\np = {PATTERN}\n{mec}.push({{'p': p}}, targets=0)\n"
            f"back = {mec}.pull('p', targets=0)")
    assert py.eval("np.array_equal(back, p)")
    assert py.eval("len(Tap.sent) > 2**23 and len(Tap.received) > 2**23")
    # The control (off) shows that the tap sees the bytes as they cross.
    assert py.eval("b'IPYTHON1-PLAINTEXT-' in Tap.sent") is shown
    assert py.eval("b'IPYTHON1-PLAINTEXT-' in Tap.received") is shown


TAMPERING = {
    "flipped": "flip",
    "dropped": "lambda n, frame: b'' if n == 1 else frame",
    "replayed": "lambda n, frame, seen=[]: (seen.append(frame) or frame) if n < 2 else seen[0]",
    "truncated": "lambda n, frame: None if n == 1 else frame",
}


@pytest.mark.parametrize("attack", list(TAMPERING))
def test_sealed_frames_altered_on_the_wire_are_refused(py: HostPython, attack: str) -> None:
    py.exec("tapped()\nenc.push({'v': 'old'}, targets=0)\n"
            f"tapped({TAMPERING[attack]})\n"
            "try:\n"
            "    enc.push({'v': np.zeros(2**20)}, targets=0)\n"  # 8 MiB: 8 frames
            "    refused = None\n"
            "except Exception as e:\n"
            "    refused = f'{type(e).__name__}: {e}'\n"
            "finally:\n"
            "    tapped()")
    refused = py.eval("refused")
    assert refused is not None
    assert "refused the transfer" in refused, refused
    assert ("closed after" if attack == "truncated" else "failed authentication") in refused
    assert py.eval("enc.pull('v', targets=0)") == "old"


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


@pytest.mark.parametrize("mec", ["enc", "tls", "plain"])
def test_a_wrong_secret_is_refused(py: HostPython, mec: str) -> None:
    py.exec("try:\n"
            f"    datachannel.client_transfer(dict(ticket({mec}, 0, 10), secret=b's' * 32),\n"
            "                                frames=[b'x' * 10])\n"
            "    refused = None\n"
            "except TransferError as e:\n"
            "    refused = str(e)")
    assert "wrong transfer secret" in py.eval("refused")

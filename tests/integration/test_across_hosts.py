"""A cluster across hosts: controller on ctl, engines on e1 and e2, the client on cli.

Each host is a network namespace of tests/hostgrid.py: no abstract Unix socket
is shared, so every command and every large value crosses hosts over TCP
(Foolscap, and the controller's data relay). The controller advertises the
name ``ctl`` (--location) on fixed ports (--port, --relay-port). Smaller
controllers of their own profiles test wildcard binds, IPv6, several
location hints, ``ipcluster start --location`` and ``--reuse`` across a restart.

One grid and one cluster serve the module; the last test kills every engine
on e2.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_until
from tests.hostgrid import HostGrid, HostPython

PORT, RELAY_PORT = 41000, 41001
PROFILE = "grid"
CLIENT_SETUP = """
import os, socket, time
import numpy as np
from ipython1.kernel import datachannel
from ipython1.client import blocking as client
from ipython1.common.errors import CompositeError, EngineError, InvalidEngineID, RemoteError
"""


class GridCluster:
    """The module's grid, its cluster's paths, and a client on cli."""

    def __init__(self, grid: HostGrid, root: Path) -> None:
        self.grid = grid
        self.root = root
        self.env = dict(os.environ, IPYTHON1_DIR=str(root), IPYTHON1_NONINTERACTIVE="1",
                        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.security = root / f"cluster_{PROFILE}" / "security"
        self.client: HostPython | None = None

    def furl(self, name: str) -> str:
        return str(self.security / f"ipcontroller-{name}.furl")

    def command(self, script: str, *args: str) -> list[str]:
        return [sys.executable, "-m", f"ipython1.scripts.{script}", *args]

    def start_engines(self, host: str, n: int, *extra: str,
                      env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.grid[host].popen(
            self.command("ipengine", "--profile", PROFILE, "--fork", str(n),
                         "--pid-file", str(self.root / f"engines-{host}.pid"), *extra),
            env=env or self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def read_log(self, name: str) -> str:
        logs = self.root / f"cluster_{PROFILE}" / "log"
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob(f"{name}*")))


@pytest.fixture(scope="module")
def across(host_grid: HostGrid,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[GridCluster]:
    grid = host_grid
    cluster = GridCluster(grid, tmp_path_factory.mktemp("across"))
    grid["ctl"].popen(cluster.command(
        "ipcontroller", "--profile", PROFILE, "--location", "ctl",
        "--port", str(PORT), "--relay-port", str(RELAY_PORT)), env=cluster.env)
    engine_furl = cluster.furl("engine")
    wait_until(lambda: os.path.exists(engine_furl), 30, "the controller's FURL files")
    # Two ways to give an engine its FURL: a file on the shared disk, the environment.
    cluster.start_engines("e1", 2, "--furl-file", engine_furl)
    furl_env = dict(cluster.env, IPYTHON1_ENGINE_FURL=Path(engine_furl).read_text().strip())
    cluster.start_engines("e2", 2, env=furl_env)
    cluster.client = py = grid["cli"].python(cluster.env, CLIENT_SETUP)
    try:
        py.exec("mec = client.MultiEngineClient(mec_furl, timeout=60)\n"
                "tc = client.TaskClient(task_furl, timeout=60)",
                mec_furl=cluster.furl("mec"), task_furl=cluster.furl("task"))
        wait_until(lambda: len(py.eval("mec.get_ids()")) == 4, 60, "4 engines")
        yield cluster
    finally:
        py.close()


@pytest.fixture
def py(across: GridCluster) -> HostPython:
    assert across.client is not None
    return across.client


def no_data_port(cluster: GridCluster) -> dict[str, str]:
    """An engine's environment without a data port: its large values take the relay."""
    return dict(cluster.env, IPYTHON1_DIRECT_DATA="0")


def hosts_of(py: HostPython) -> dict[int, str]:
    return {i["engine_id"]: i["hostname"] for i in py.eval("mec.engine_info()")}


# -- where things are --------------------------------------------------------------------


def test_engines_and_client_are_on_other_hosts_with_no_local_shortcut(
        across: GridCluster, py: HostPython) -> None:
    hosts = hosts_of(py)
    assert sorted(hosts.values()) == ["e1", "e1", "e2", "e2"]
    assert py.eval("socket.gethostname()") == "cli"
    # No Unix socket is shared: commands take the controller's TLS port (issue 17).
    wait_until(lambda: {i["command_transport"] for i in py.eval("mec.engine_info()")} ==
               {"tcp-channel"}, 20, "every engine on the TLS channel")
    assert py.eval("mec.local_channel") is True
    ids = sorted(hosts)
    py.exec("mec.execute('import socket; h = socket.gethostname()')")
    assert py.eval("mec.pull('h')") == [hosts[i] for i in ids]


def test_furls_advertise_the_location_on_the_fixed_port(across: GridCluster) -> None:
    for name in ("engine", "mec", "task"):
        furl = Path(across.furl(name)).read_text().strip()
        assert furl.split("@", 1)[1].split("/", 1)[0] == f"tcp:ctl:{PORT}"
    listening = across.grid["ctl"].run(["ss", "-Htln"]).stdout
    assert f":{PORT} " in listening and f":{RELAY_PORT} " in listening, listening
    assert f"0.0.0.0:{PORT} " in listening  # --location alone listens on every interface


def test_a_named_users_furl_works_from_another_host(across: GridCluster, py: HostPython) -> None:
    out = across.grid["ctl"].run(across.command("ipcluster", "--profile", PROFILE, "adduser",
                                                "alice"), env=across.env)
    assert out.returncode == 0, out.stdout + out.stderr
    path = out.stdout.strip()
    assert furl_hints(path) == [f"tcp:ctl:{PORT}"]
    py.exec("alice = client.MultiEngineClient(path, timeout=60)", path=path)
    try:
        assert py.eval("alice.user") == "alice"
        assert py.eval("alice.execute('20 + 22', targets=0).output") == 42
    finally:
        py.exec("alice.close()")


# -- every multi-engine op -----------------------------------------------------------------


# One call per command of the op table, on every engine (both hosts). A command
# added to the table fails this test until it is called across hosts here too.
OP_CALLS = {
    "execute": ("mec.execute('op_x = 1')", None),
    "push": ("mec.push({'op_y': 2})", None),
    "pull": ("mec.pull('op_y')", [2, 2, 2, 2]),
    "apply": ("mec.apply(lambda: 3)", [3, 3, 3, 3]),
    "get_result": ("[r.output for r in mec.get_result()]", None),
    "keys": ("['op_y' in k for k in mec.keys()]", [True] * 4),
    "history": ("['op_x = 1' in str(h) for h in mec.history()]", [True] * 4),
    "inspect": ("['int' in str(i) for i in mec.inspect('op_y')]", [True] * 4),
    "who": ("['op_y' in str(w) for w in mec.who()]", [True] * 4),
    "whos": ("['op_y' in str(w) for w in mec.whos()]", [True] * 4),
    "ping": ("sorted(p['pid'] for p in mec.ping()) == sorted(mec.apply(os.getpid))", True),
    "complete": ("[c['matches'] for c in mec.complete('op_')]", [["op_x", "op_y"]] * 4),
    "run_tasks": ("tc.map(abs, [-1, -2, -3, -4, -5, -6, -7, -8])", [1, 2, 3, 4, 5, 6, 7, 8]),
    "debug": ("debug_across(mec)", ("quit", True)),
    "reset": ("(mec.reset(), ['op_y' in k for k in mec.keys()])[1]", [False] * 4),
}
# pdb on engine 0, post mortem, driven from the client on cli: what a user types at
# the (Pdb 0) prompt comes from input(), here scripted.
DEBUG_ACROSS = """
import builtins, contextlib, io
def debug_across(mec):
    try:
        mec.execute('op_z = 21\\n1 / 0', targets=0)
    except RemoteError:
        pass
    typed = iter(['p op_z * 2', 'quit'])
    saved, builtins.input = builtins.input, lambda prompt='': next(typed)
    shown = io.StringIO()
    try:
        with contextlib.redirect_stdout(shown):
            ended = mec.debug(0)
    finally:
        builtins.input = saved
    return ended, '42' in shown.getvalue()
"""


def test_every_op_of_the_table_runs_on_engines_on_other_hosts(py: HostPython) -> None:
    from ipython1.common import ops

    assert set(OP_CALLS) == set(ops.OPS)
    py.exec(DEBUG_ACROSS)
    for name, (call, expected) in OP_CALLS.items():
        value = py.eval(call)
        if expected is not None:
            assert value == expected, (name, value)


def test_execute_push_pull_and_results(py: HostPython) -> None:
    result = py.eval("mec.execute('a = 6 * 7', targets=0)")
    assert "a = 6 * 7" in str(result)
    py.exec("mec.push({'b': np.arange(10), 'c': 'text'})")
    assert py.eval("mec.pull('a', targets=0)") == 42
    b, c = py.eval("mec.pull(['b', 'c'], targets=1)")
    assert list(b) == list(range(10)) and c == "text"
    assert py.eval("mec.get_result(targets=0)") is not None
    pending = py.eval("mec.execute('d = 1', block=False).get_result() is not None")
    assert pending is True


def test_scatter_gather_map_apply(py: HostPython) -> None:
    py.exec("mec.scatter('x', list(range(40)))")
    assert py.eval("mec.gather('x')") == list(range(40))
    assert py.eval("mec.map(lambda v: v * v, range(20))") == [v * v for v in range(20)]
    assert sorted(py.eval("mec.apply(socket.gethostname)")) == ["e1", "e1", "e2", "e2"]
    assert py.eval("mec.apply(lambda a, b: a + b, 2, 3, targets=3)") == 5


def test_namespace_and_introspection_ops(py: HostPython) -> None:
    py.exec("mec.reset(); mec.execute('import math\\nmy_value = 1')")
    assert all("my_value" in keys for keys in py.eval("mec.keys()"))
    assert "my_value" in str(py.eval("mec.who(targets=0)"))
    assert "my_value" in str(py.eval("mec.whos(targets=0)"))
    assert "import math" in str(py.eval("mec.history(targets=0)"))
    assert "sqrt" in str(py.eval("mec.inspect('math.sqrt', targets=0)"))
    completions = py.eval("mec.complete('math.sq', targets=0)")
    assert any(m.endswith("sqrt") for m in completions["matches"]), completions
    py.exec("mec.reset(targets=0)")
    assert "my_value" not in py.eval("mec.keys(targets=0)")


def test_queue_status_clear_queue_and_events(py: HostPython) -> None:
    statuses = py.eval("mec.queue_status()")
    assert sorted(s["engine_id"] for s in statuses) == py.eval("mec.get_ids()")
    py.exec("blocker = mec.execute('import time; time.sleep(3)', targets=0, block=False)\n"
            "queued = [mec.execute('q = 1', targets=0, block=False) for _ in range(3)]")
    wait_until(lambda: py.eval("mec.queue_status(targets=0)[0]['queued']"), 10, "queued")
    cleared = py.eval("mec.clear_queue(targets=0)")
    assert cleared[0]["cleared"] >= 1
    py.exec("blocker.get_result(timeout=30)")
    assert py.eval("mec.session_log()")  # the controller kept this client's session


def test_live_output_events_and_pending_results_cross_hosts(py: HostPython) -> None:
    py.exec("seen = []\nmec.subscribe(lambda e, name, text: seen.append((e, name, text)))\n"
            "events = []\nmec.subscribe_events(events.append, history=0)")
    py.exec("mec.execute('import socket; print(\"from\", socket.gethostname())', "
            "targets=[0, 2])")
    wait_until(lambda: len(py.eval("[t for _, n, t in seen if 'from' in t]")) == 2, 10,
               "live output from two engines")
    assert {t.split()[1] for t in py.eval("[t for _, n, t in seen if 'from' in t]")} \
        <= {"e1", "e2"}
    wait_until(lambda: py.eval("any(e.get('kind') == 'result' for e in events)"),
               10, "events")
    py.exec("mec.unsubscribe(); mec.unsubscribe_events()")
    pid = py.eval("mec.execute('7 * 6', targets=1, block=False).id")
    assert pid in py.eval("mec.pending_ids()")
    assert py.eval(f"mec.get_pending_result({pid}).output") == 42


def test_errors_from_engines_on_other_hosts_name_the_engine(py: HostPython) -> None:
    py.exec("try:\n    mec.execute('1 / 0', targets=[0, 1])\n    error = None\n"
            "except CompositeError as e:\n    error = e")
    assert py.eval("sorted(e.engine_id for e in error.errors)") == [0, 1]
    assert py.eval("{e.ename for e in error.errors}") == {"ZeroDivisionError"}


def test_large_array_scatter_gather_goes_straight_to_engines_on_other_hosts(
        py: HostPython) -> None:
    relayed = py.eval("datachannel.TRANSFERS['relay']")
    before = py.eval("datachannel.TRANSFERS['direct']")
    py.exec("a = np.arange(8 * 2**20, dtype=np.float64)")  # 64 MiB
    t0 = time.monotonic()
    py.exec("mec.scatter('big', a)")
    same = py.eval("bool((mec.gather('big') == a).all())")
    seconds = time.monotonic() - t0
    assert same
    assert py.eval("datachannel.TRANSFERS['direct']") - before >= 8  # 4 up, 4 down
    assert py.eval("datachannel.TRANSFERS['relay']") == relayed
    assert py.eval("datachannel.TRANSFERS['local']") == 0
    assert seconds < 60


def test_task_farm_uses_engines_on_both_hosts(py: HostPython) -> None:
    assert py.eval("tc.map(lambda v: v + 1, range(200), chunksize=10)") == list(range(1, 201))
    py.exec("tids = [tc.run(client.MapTask(lambda: (time.sleep(0.2), socket.gethostname())[1]))"
            "        for _ in range(16)]\n"
            "tc.barrier(tids)")
    assert py.eval("{tc.get_task_result(t).result for t in tids}") == {"e1", "e2"}
    tid = py.eval("tc.run(client.StringTask('b = a * 2', push={'a': 21}, pull='b'))")
    assert py.eval(f"tc.get_task_result({tid}, block=True)['b']") == 42


def test_interrupt_reaches_an_engine_on_another_host(py: HostPython) -> None:
    engine = next(i for i, h in hosts_of(py).items() if h == "e1")
    py.exec(f"running = mec.execute('import time; time.sleep(60)', targets={engine}, "
            "block=False)")
    wait_until(lambda: py.eval(f"mec.queue_status(targets={engine})[0]['running']"), 10,
               "the sleep to run")
    t0 = time.monotonic()
    assert py.eval(f"mec.interrupt(targets={engine})") is True
    py.exec("try:\n    running.get_result(timeout=10)\n    ename = None\n"
            "except RemoteError as e:\n    ename = e.ename")
    assert py.eval("ename") == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 5
    assert py.eval(f"mec.execute('2 + 2', targets={engine}).output") == 4


# -- addresses: wildcards, IPv6, ipcluster, an unreachable controller ----------------------


def furl_hints(path: str) -> list[str]:
    return Path(path).read_text().strip().split("@", 1)[1].split("/", 1)[0].split(",")


def run_controller(across: GridCluster, host: str, profile: str, *args: str) -> Any:
    proc = across.grid[host].popen(across.command(
        "ipcontroller", "--profile", profile, *args), env=across.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    furl = across.root / f"cluster_{profile}" / "security" / "ipcontroller-engine.furl"
    wait_until(lambda: furl.exists() or proc.poll() is not None, 30, f"{profile}'s FURL")
    return proc, str(furl)


def stop(proc: Any) -> None:
    proc.terminate()
    proc.wait(timeout=15)


def test_a_wildcard_bind_advertises_the_hosts_addresses_never_the_wildcard(
        across: GridCluster) -> None:
    e1 = across.grid["e1"]
    for ip, expected in (("0.0.0.0", [e1.address]), ("::", [e1.address, f"[{e1.address6}]"])):
        proc, furl = run_controller(across, "e1", f"wild{len(expected)}", "--ip", ip)
        try:
            hosts = [hint.rsplit(":", 1)[0] for hint in furl_hints(furl)]
            assert hosts == [f"tcp:{h}" for h in expected], hosts  # no 0.0.0.0, no 127.0.0.1
        finally:
            stop(proc)


def test_ipv6_only_controller_engine_and_client(across: GridCluster, py: HostPython) -> None:
    ctl = across.grid["ctl"]
    proc, furl = run_controller(across, "ctl", "six", "--ip", "::", "--location", ctl.address6)
    engine = across.grid["e1"].popen(across.command(
        "ipengine", "--profile", "six", "--furl-file", furl), env=no_data_port(across))
    try:
        assert furl_hints(furl)[0].startswith(f"tcp:[{ctl.address6}]:")
        py.exec("mec6 = client.MultiEngineClient(path, timeout=60)", path=furl.replace(
            "engine.furl", "mec.furl"))
        wait_until(lambda: py.eval("mec6.get_ids()") == [0], 30, "the IPv6 engine")
        assert py.eval("mec6.apply(socket.gethostname)") == ["e1"]
        before = py.eval("datachannel.TRANSFERS['relay']")
        py.exec("mec6.push({'v': np.arange(2**20)}, targets=0)")  # 8 MiB: the relay, over IPv6
        assert py.eval("int(mec6.pull('v', targets=0).sum())") == sum(range(2**20))
        assert py.eval("datachannel.TRANSFERS['relay']") - before == 2
    finally:
        py.exec("mec6.close()" if py.eval("'mec6' in globals()") else "pass")
        engine.terminate()
        stop(proc)
        engine.wait(timeout=15)


def test_an_unreachable_first_location_is_skipped_and_the_relay_follows_the_one_that_worked(
        across: GridCluster, py: HostPython) -> None:
    # 10.78.0.1 has no route from any grid host: dialling it fails at once, locally.
    proc, furl = run_controller(across, "ctl", "multi", "--location", "10.78.0.1,ctl")
    engine = across.grid["e1"].popen(across.command(
        "ipengine", "--profile", "multi", "--furl-file", furl), env=no_data_port(across))
    try:
        assert [h.rsplit(":", 1)[0] for h in furl_hints(furl)] == ["tcp:10.78.0.1", "tcp:ctl"]
        py.exec("multi = client.MultiEngineClient(path, timeout=60)",
                path=furl.replace("engine.furl", "mec.furl"))
        wait_until(lambda: py.eval("multi.get_ids()") == [0], 30, "the engine")
        before = py.eval("datachannel.TRANSFERS['relay']")
        py.exec("multi.push({'v': np.ones(2**20)}, targets=0)")
        assert py.eval("float(multi.pull('v', targets=0).sum())") == 2**20
        assert py.eval("datachannel.TRANSFERS['relay']") - before == 2
    finally:
        py.exec("multi.close()" if py.eval("'multi' in globals()") else "pass")
        engine.terminate()
        stop(proc)
        engine.wait(timeout=15)


def test_reuse_across_a_controller_restart(across: GridCluster, py: HostPython) -> None:
    # --reuse (issue 15): the same port, FURLs and engine ids; the engine on e1 and the
    # client on cli rejoin the restarted controller over the network.
    ctl = across.grid["ctl"]
    args = ("--reuse", "--location", "ctl")
    proc, furl = run_controller(across, "ctl", "again", *args)
    first_furl = Path(furl).read_text()
    port = int(furl_hints(furl)[0].rsplit(":", 1)[1])
    relay_port = int((Path(furl).parents[1] / "relay-port").read_text())
    command_port = int((Path(furl).parents[1] / "command-port").read_text())
    engine = across.grid["e1"].popen(across.command(
        "ipengine", "--profile", "again", "--furl-file", furl), env=no_data_port(across))
    try:
        py.exec("again = client.MultiEngineClient(path, timeout=60)",
                path=furl.replace("engine.furl", "mec.furl"))
        wait_until(lambda: py.eval("again.get_ids()") == [0], 30, "the engine")
        py.exec("again.execute('kept = 5', targets=0)")
        proc.kill()
        proc.wait(timeout=15)
        wait_until(lambda: f":{port} " not in ctl.run(["ss", "-Htln"]).stdout, 10, "port free")
        proc, _ = run_controller(across, "ctl", "again", *args)
        wait_until(lambda: f":{port} " in ctl.run(["ss", "-Htln"]).stdout, 30,
                   "the restarted controller on the same port")
        # The data relay too (fixed ports let firewalls and tunnels be set up once).
        assert f":{relay_port} " in ctl.run(["ss", "-Htln"]).stdout
        assert f":{command_port} " in ctl.run(["ss", "-Htln"]).stdout
        assert Path(furl).read_text() == first_furl
        wait_until(lambda: py.eval("again.get_ids()") == [0], 60, "the engine to rejoin")
        assert py.eval("again.pull('kept', targets=0)") == 5  # same engine, same namespace
        wait_until(lambda: py.eval("again.engine_info()")[0]["command_transport"] ==
                   "tcp-channel", 20, "the rejoined engine on the TLS channel again")
        before = py.eval("datachannel.TRANSFERS['relay']")
        py.exec("again.push({'v': np.ones(2**20)}, targets=0)")  # the new relay
        assert py.eval("float(again.pull('v', targets=0).sum())") == 2**20
        assert py.eval("datachannel.TRANSFERS['relay']") - before == 2
    finally:
        py.exec("again.close()" if py.eval("'again' in globals()") else "pass")
        engine.terminate()
        stop(proc)
        engine.wait(timeout=15)


def test_ipcluster_start_with_location_and_engines_joining_from_another_host(
        across: GridCluster, py: HostPython) -> None:
    ctl = across.grid["ctl"]
    ipcluster = across.command("ipcluster", "--profile", "late")
    out = ctl.run([*ipcluster, "start", "-n", "1", "--daemon", "--location", "ctl",
                   "--port", "42000", "--relay-port", "42001"], env=across.env, timeout=120)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        furl = str(across.root / "cluster_late" / "security" / "ipcontroller-engine.furl")
        assert f"advertise ctl:42000; on another host: ipengine --furl-file {furl}" in out.stdout
        engine = across.grid["e1"].popen(
            across.command("ipengine", "--furl", Path(furl).read_text()), env=across.env,
            stderr=subprocess.PIPE, text=True)
        said = first_line(engine, timeout=30)
        assert "(host e1, pid" in said, said
        assert f"registered with the controller at {ctl.address}" in said, said
        py.exec("late = client.MultiEngineClient(path, timeout=60)",
                path=furl.replace("engine.furl", "mec.furl"))
        wait_until(lambda: len(py.eval("late.get_ids()")) == 2, 30, "the engine from e1")
        assert sorted(py.eval("late.apply(socket.gethostname)")) == ["ctl", "e1"]
        py.exec("late.close()")
    finally:
        ctl.run([*ipcluster, "stop", "--grace", "5"], env=across.env)


def first_line(proc: Any, timeout: float) -> str:
    """Return proc's first line of stderr, or "" if none comes within timeout."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stderr.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


def test_an_engine_says_which_addresses_it_tried_and_what_to_check(
        across: GridCluster, py: HostPython) -> None:
    # A FURL naming a port where nothing listens, and one naming the controller's loopback.
    furl = Path(across.furl("engine")).read_text().strip()
    tub, rest = furl.split("@", 1)
    nowhere = f"{tub}@tcp:ctl:42999/{rest.split('/', 1)[1]}"
    loopback = f"{tub}@tcp:127.0.0.1:{PORT}/{rest.split('/', 1)[1]}"
    e1 = across.grid["e1"]
    waiting = e1.popen(across.command("ipengine", "--furl", nowhere, "--connect-timeout", "60"),
                       env=across.env, stderr=subprocess.PIPE, text=True)
    given_up = e1.popen(across.command("ipengine", "--connect-timeout", "2"),
                        env=dict(across.env, IPYTHON1_ENGINE_FURL=loopback),
                        stderr=subprocess.PIPE, text=True)
    try:
        line = first_line(waiting, timeout=20)  # after 5 s of retrying, while still retrying
        assert "no controller yet" in line and "still trying" in line, line
        assert "tried ctl:42999 from host e1" in line and "TCP port 42999" in line, line
        assert waiting.poll() is None
        assert given_up.wait(timeout=30) == 3
        message = given_up.stderr.read()
        assert f"tried 127.0.0.1:{PORT} from host e1" in message, message
        assert "only works on the controller's own host" in message
        assert "--location" in message and "--ip 0.0.0.0" in message
        # A client given such a FURL is told the same.
        py.exec("try:\n    client.MultiEngineClient(furl, connect_timeout=5)\n    said = ''\n"
                "except Exception as e:\n    said = str(e)", furl=loopback)
        said = py.eval("said")
        assert f"tried 127.0.0.1:{PORT} from host cli" in said and "--location" in said, said
    finally:
        waiting.kill()
        waiting.wait()


# -- losing a host's engines ------------------------------------------------------------------


def test_sigkill_of_every_engine_on_one_host(across: GridCluster, py: HostPython) -> None:
    hosts = hosts_of(py)
    lost = sorted(i for i, h in hosts.items() if h == "e2")
    kept = sorted(i for i, h in hosts.items() if h == "e1")
    py.exec(f"running = mec.execute('import time; time.sleep(60)', targets={lost}, block=False)")
    wait_until(lambda: all(s["running"] for s in py.eval(f"mec.queue_status(targets={lost})")),
               10, "e2's engines busy")
    t0 = time.monotonic()
    assert across.grid["e2"].kill_all(signal.SIGKILL)
    py.exec("try:\n    running.get_result(timeout=30)\n    error = None\n"
            "except Exception as e:\n    error = e")
    error = py.eval("f'{type(error).__name__}: {error}'")
    assert any(f"engine {i}" in error for i in lost) and "died" in error, error
    assert time.monotonic() - t0 < 10
    wait_until(lambda: py.eval("mec.get_ids()") == kept, 10, "e2's engines to be dropped")
    # The rest keep working: direct commands, large values and the task farm.
    assert py.eval("mec.apply(socket.gethostname)") == ["e1", "e1"]
    assert py.eval("(mec.scatter('y', np.ones(2**20)), mec.gather('y').sum())[1]") == 2**20
    assert py.eval("tc.map(lambda v: -v, range(20))") == [-v for v in range(20)]
    with pytest.raises(Exception, match=f"no engine with id {lost[0]}"):
        py.eval(f"mec.execute('1', targets={lost[0]})")


def test_kill_ends_an_engine_on_another_host(across: GridCluster, py: HostPython) -> None:
    before = across.grid["e1"].pids()
    survivor, victim = py.eval("mec.get_ids()")
    pid = py.eval(f"mec.apply(os.getpid, targets={victim})")
    assert pid in before
    py.exec(f"mec.kill(targets={victim})")
    wait_until(lambda: pid not in across.grid["e1"].pids(), 10, "the engine process to exit")
    wait_until(lambda: py.eval("mec.get_ids()") == [survivor], 10, "the engine to be dropped")
    assert py.eval(f"mec.execute('1 + 1', targets={survivor}).output") == 2

"""ipcluster --engines ssh against a real sshd in each namespace host of a test grid.

The controller and ipcluster run in host ``ctl``; engines go to ``e1`` and
``e2`` over ssh (Debian's openssh-server, a key the test makes, port 2222).
Marked ``batch``: CI runs these after the default suite (see .ci/run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipython1.common.processes import Identity, recorded
from tests.batchsystems import SSHDs, ssh_unavailable
from tests.conftest import Cluster, kill_all, pid_alive, wait_until
from tests.hostgrid import HostGrid, unavailable_reason

pytestmark = [
    pytest.mark.batch,
    pytest.mark.skipif(bool(ssh_unavailable() or unavailable_reason()),
                       reason=f"needs sshd and a host grid: "
                              f"{ssh_unavailable() or unavailable_reason()}"),
]

CHECK = """
import json, os, socket, sys
from ipython1.client.blocking import MultiEngineClient
mec = MultiEngineClient(profile="test")
def where():
    import os, socket
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "furl_on_argv": "pb://" in open("/proc/self/cmdline").read(),
            "ipython1_dir": os.environ.get("IPYTHON1_DIR")}
print("RESULT " + json.dumps({"ids": mec.get_ids(), "engines": mec.apply(where)}))
mec.close()
"""

DIE = """
import json
from ipython1.client.blocking import MultiEngineClient
from ipython1.common.errors import EngineError
mec = MultiEngineClient(profile="test")
(e2,) = [i["engine_id"] for i in mec.engine_info() if i["hostname"] == "e2"]
try:
    mec.execute("import os, time; os.write(2, b'last words on e2\\\\n'); time.sleep(0.5); "
                "os.kill(os.getpid(), 9)", targets=e2)
except EngineError as e:
    print("RESULT " + json.dumps({"host": e.host, "exit": e.exit, "stderr": e.stderr}))
mec.close()
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostGrid, SSHDs]]:
    with HostGrid(["ctl", "e1", "e2", "cli"]) as grid, \
            SSHDs(tmp_path_factory.mktemp("ssh"), [grid["e1"], grid["e2"], grid["ctl"]]) as sshds:
        yield grid, sshds


class GridCluster:
    """A cluster whose ipcluster runs in host ctl; stopped from there, then by pid."""

    def __init__(self, grid: HostGrid, root: Path) -> None:
        self.grid = grid
        self.cluster = Cluster(root)
        self.ctl = grid["ctl"]
        self.pids: list[int] = []
        self.stop_on = "ctl"  # the host whose ipcluster started the cluster

    def ipcluster(self, *args: str, timeout: float = 180,
                  on: str = "ctl") -> subprocess.CompletedProcess[str]:
        return self.grid[on].run([sys.executable, "-m", "ipython1.scripts.ipcluster",
                                  "--profile", "test", *args], env=self.cluster.env,
                                 timeout=timeout)

    def check(self, on: str = "ctl") -> dict[str, Any]:
        proc = self.grid[on].run([sys.executable, "-c", CHECK], env=self.cluster.env,
                                 timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout.split("RESULT ", 1)[1])
        self.pids += [e["pid"] for e in result["engines"]]
        return result

    def stop(self, on: str = "ctl") -> None:
        try:
            self.ipcluster("stop", "--grace", "5", timeout=60, on=on)
        finally:
            self.cluster.record_pids()
            kill_all(self.pids + self.cluster.pids)


@pytest.fixture
def cluster(grid: tuple[HostGrid, SSHDs], tmp_path: Path) -> Iterator[GridCluster]:
    c = GridCluster(grid[0], tmp_path / "ipython1")
    try:
        yield c
    finally:
        c.stop(on=c.stop_on)


def test_engines_on_two_hosts_over_ssh(grid: tuple[HostGrid, SSHDs],
                                       cluster: GridCluster) -> None:
    hosts, sshds = grid
    started = cluster.ipcluster(
        "start", "--engines", "ssh", "--hosts", "e1:2,e2:1", "--location", "ctl",
        "--ssh-args", sshds.ssh_args, "--daemon", "--timeout", "90")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "controller and 3 engines are up" in started.stdout
    result = cluster.check()
    assert result["ids"] == [0, 1, 2]
    engines = result["engines"]
    assert sorted(e["host"] for e in engines) == ["e1", "e1", "e2"]
    # The FURL came over the ssh connection: not on any argv, and not from the cluster
    # directory (each host has its own IPYTHON1_DIR, so the engines never saw the test's).
    assert not any(e["furl_on_argv"] for e in engines)
    assert {e["host"]: e["ipython1_dir"] for e in engines} == {
        "e1": str(sshds.home(hosts["e1"])), "e2": str(sshds.home(hosts["e2"]))}
    pid_file = sshds.home(hosts["e1"]) / "cluster_test" / "pid" / "ssh-engines-0-e1.pid"
    recorded_pids = [r.pid if isinstance(r, Identity) else r for r in recorded(pid_file)]
    e1_pids = [e["pid"] for e in engines if e["host"] == "e1"]
    # The engines (their watcher, ipengine --watch, ends by itself with the last of them).
    assert sorted(e1_pids) == sorted(recorded_pids)

    status = cluster.ipcluster("status")
    assert "ssh e1 (2 engines): pid" in status.stdout and "running" in status.stdout
    assert "ssh e2 (1 engines): pid" in status.stdout
    assert "3 engine(s)" in status.stdout

    # ipcluster doctor: healthy; and each configured host, dialled over its ssh, reaches
    # the controller (as engines not yet started there would need to).
    doctor = cluster.ipcluster("doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    dial = cluster.grid["ctl"].run(
        [sys.executable, "-c", "import json\n"
         "from ipython1.cluster.doctor import check_configured_hosts\n"
         "from ipython1.common.clusterdir import ClusterDir\n"
         "found = check_configured_hosts(ClusterDir('test'), set())\n"
         "print('RESULT', json.dumps([f.__dict__ for f in found]))"],
        env=cluster.cluster.env, timeout=120)
    found = json.loads(dial.stdout.split("RESULT ", 1)[1])
    assert sorted((f["level"], f["what"]) for f in found) == [
        ("ok", "configured host e1 reaches the controller"),
        ("ok", "configured host e2 reaches the controller")], found

    # An engine on e2 dies: its watcher there tells the controller how (issue 15).
    died = cluster.grid["ctl"].run([sys.executable, "-c", DIE], env=cluster.cluster.env,
                                   timeout=60)
    assert "RESULT " in died.stdout, died.stdout + died.stderr
    report = json.loads(died.stdout.split("RESULT ", 1)[1])
    assert report["host"] == "e2" and "SIGKILL" in report["exit"], report
    assert "last words on e2" in report["stderr"], report

    stopped = cluster.ipcluster("stop")
    assert stopped.returncode == 0, stopped.stdout
    assert "could not stop" not in stopped.stdout
    assert not pid_file.exists()  # each host was asked over ssh to end its engines
    wait_until(lambda: not any(pid_alive(e["pid"]) for e in engines), 30,
               "the remote engines to exit")


BACK = """
import json, time
from ipython1.client.blocking import MultiEngineClient
from ipython1.common.errors import EngineError
mec = MultiEngineClient(profile="test")
before = {i["engine_id"]: (i["hostname"], i["pid"]) for i in mec.engine_info()}
(e2,) = [e for e, (host, _) in before.items() if host == "e2"]
try:
    mec.execute("import os, time; os.write(2, b'gone on e2\\\\n'); time.sleep(0.5); "
                "os.kill(os.getpid(), 9)", targets=e2)
except EngineError as e:
    report = {"host": e.host, "exit": e.exit, "stderr": e.stderr}
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    now = {i["engine_id"]: (i["hostname"], i["pid"]) for i in mec.engine_info()}
    if e2 in now and now[e2][1] != before[e2][1]:
        break
    time.sleep(0.2)
print("RESULT " + json.dumps({"report": report, "before": before[e2], "after": now.get(e2)}))
mec.close()
"""


def test_restart_engines_on_other_hosts(grid: tuple[HostGrid, SSHDs],
                                        cluster: GridCluster) -> None:
    # --restart-engines with --engines ssh: a supervisor on each host (issue 15).
    hosts, sshds = grid
    started = cluster.ipcluster(
        "start", "--engines", "ssh", "--hosts", "e1:1,e2:1", "--location", "ctl",
        "--ssh-args", sshds.ssh_args, "--daemon", "--timeout", "90", "--restart-engines")
    assert started.returncode == 0, started.stdout + started.stderr
    proc = cluster.ctl.run([sys.executable, "-c", BACK], env=cluster.cluster.env, timeout=90)
    assert "RESULT " in proc.stdout, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    # How it ended came over Foolscap from e2's supervisor; back there with its id.
    assert "SIGKILL" in result["report"]["exit"] and result["report"]["host"] == "e2"
    assert "gone on e2" in result["report"]["stderr"]
    assert result["after"] and result["after"][0] == "e2" and \
        result["after"][1] != result["before"][1], result
    cluster.pids.append(result["after"][1])
    pid_file = sshds.home(hosts["e2"]) / "cluster_test" / "pid" / "ssh-engines-1-e2.pid"
    recorded_pids = [r.pid if isinstance(r, Identity) else r for r in recorded(pid_file)]
    assert result["after"][1] in recorded_pids  # the supervisor and its engine: stop ends both
    stopped = cluster.ipcluster("stop")
    assert stopped.returncode == 0 and "could not stop" not in stopped.stdout, stopped.stdout
    wait_until(lambda: not any(pid_alive(p) for p in recorded_pids), 30, "e2's processes")


def test_ssh_that_cannot_log_in_is_reported(grid: tuple[HostGrid, SSHDs],
                                            cluster: GridCluster, tmp_path: Path) -> None:
    hosts, sshds = grid
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, timeout=30)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("e2 slots=1\n")
    started = cluster.ipcluster(
        "start", "--engines", "ssh", "--hostfile", str(hostfile), "--ip",
        hosts["ctl"].address, "--ssh-args", sshds.ssh_args.replace(str(sshds.key), str(stranger)),
        "--daemon", "--timeout", "60")
    assert started.returncode == 1
    assert "ssh e2 (1 engines) exited (status 255) before its engines registered" \
        in started.stdout
    assert "Permission denied (publickey)" in started.stdout
    assert not cluster.cluster.dir.controller_running()


MPI_CHECK = """
from ipython1.client.blocking import MultiEngineClient
mec = MultiEngineClient(profile="test")
mec.execute("import socket; from mpi4py import MPI; w = MPI.COMM_WORLD; "
            "r = (w.Get_rank(), w.Get_size(), socket.gethostname(), w.allreduce(w.Get_rank()))")
print("RANKS", mec.pull("r"))
mec.close()
"""


@pytest.mark.mpi
def test_mpi_ranks_on_two_hosts_with_mpiexec(grid: tuple[HostGrid, SSHDs],
                                             cluster: GridCluster, tmp_path: Path) -> None:
    # MPICH's mpiexec (Hydra) reaches e1 and e2 over the test's ssh (port, key).
    pytest.importorskip("mpi4py")
    from ipython1.engine import mpi

    try:
        mpiexec = mpi.find_mpiexec()
    except Exception as e:
        pytest.skip(f"no mpiexec: {e}")
    if mpi.mpiexec_flavor(mpiexec) != "mpich":
        pytest.skip("the host list and ssh options are MPICH's (Hydra)")
    hosts, sshds = grid
    wrapper = tmp_path / "ssh-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec ssh {sshds.ssh_args} "$@"\n')
    wrapper.chmod(0o755)
    started = cluster.ipcluster(
        "start", "-n", "4", "--engines", "mpiexec", "--location", "ctl", "--mpi-args",
        f"-hosts e1:2,e2:2 -launcher ssh -launcher-exec {wrapper}", "--daemon",
        "--timeout", "90")
    assert started.returncode == 0, started.stdout + started.stderr
    proc = cluster.ctl.run([sys.executable, "-c", MPI_CHECK], env=cluster.cluster.env,
                           timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # One MPI world over two hosts; engine ids are ranks.
    assert "RANKS [(0, 4, 'e1', 6), (1, 4, 'e1', 6), (2, 4, 'e2', 6), (3, 4, 'e2', 6)]" \
        in proc.stdout, proc.stdout


def test_controller_on_another_host_too(grid: tuple[HostGrid, SSHDs],
                                        cluster: GridCluster) -> None:
    # ipcluster on cli; the controller on ctl and the engines on e1, e2, all over ssh.
    hosts, sshds = grid
    cluster.stop_on = "cli"
    started = cluster.ipcluster(
        "start", "--engines", "ssh", "--hosts", "e1:1,e2:1", "--controller-host", "ctl",
        "--ssh-args", sshds.ssh_args, "--daemon", "--timeout", "90", on="cli")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "the controller's FURLs advertise ctl:" in started.stdout
    # The FURLs came back over ssh from ctl's own cluster directory into cli's.
    remote = sshds.home(hosts["ctl"]) / "cluster_test"
    assert (remote / "pid" / "ipcontroller.pid").exists()
    for name in ("ipcontroller-engine.furl", "ipcontroller-mec.furl"):
        assert (cluster.cluster.dir.security / name).read_text() == \
            (remote / "security" / name).read_text()
    controller_pid = int((remote / "pid" / "ipcontroller.pid").read_text().split()[0])
    result = cluster.check(on="cli")
    assert sorted(e["host"] for e in result["engines"]) == ["e1", "e2"]
    assert "controller: pid" in cluster.ipcluster("status", on="cli").stdout

    stopped = cluster.ipcluster("stop", on="cli")
    assert stopped.returncode == 0 and "could not stop" not in stopped.stdout, stopped.stdout
    wait_until(lambda: not pid_alive(controller_pid), 30, "the controller on ctl to exit")
    wait_until(lambda: not any(pid_alive(e["pid"]) for e in result["engines"]), 30,
               "the engines to exit")

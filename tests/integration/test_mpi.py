"""MPI engines under a real mpiexec: ranks, collectives, wrapped C code, failures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from ipython1.common.errors import EngineError, MPIUnavailable, NoEnginesRegistered
from ipython1.engine import mpi
from tests.conftest import ROOT, Cluster, kill_all, pid_alive, wait_until


def _mpi_missing() -> str:
    try:
        mpi.find_mpiexec()
    except MPIUnavailable as e:
        return str(e)
    if not mpi.mpi4py_installed():
        return f"mpi4py is not installed: {mpi.INSTALL_HINT}"
    return ""


pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(bool(_mpi_missing()), reason=f"MPI tests need mpiexec and mpi4py: "
                       f"{_mpi_missing()}"),
]

EXAMPLES = ROOT / "docs" / "examples" / "mpi"
# Short Tub timeouts for the controller, so that a collective that outlasts
# them shows the MPI engines' connections survive (the default is 120 s).
DISCONNECT_TIMEOUT = 1.5
SHORT_TIMEOUTS = {"IPYTHON1_TUB_OPTIONS": json.dumps(
    {"keepaliveTimeout": 0.5, "disconnectTimeout": DISCONNECT_TIMEOUT})}


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture(scope="module")
def mpi_cluster(tmp_path_factory: pytest.TempPathFactory):
    cluster = Cluster(tmp_path_factory.mktemp("mpi"))
    cluster.env.update(SHORT_TIMEOUTS)
    try:
        cluster.start(4, "--mpi")
        mec = cluster.client(timeout=60)
        # Record every rank too, so that they are stopped even if mpiexec is not.
        cluster.pids += [info["pid"] for info in mec.engine_info()]
        mec.execute("from mpi4py import MPI; comm = MPI.COMM_WORLD; import numpy as np")
        yield cluster, mec
    finally:
        cluster.stop()


def test_ids_equal_ranks(mpi_cluster):
    cluster, mec = mpi_cluster
    assert mec.get_ids() == [0, 1, 2, 3]
    infos = mec.engine_info()
    assert [(i["engine_id"], i["mpi_rank"], i["mpi_size"]) for i in infos] == [
        (r, r, 4) for r in range(4)]
    assert len({i["mpi_job"] for i in infos}) == 1
    assert "MPICH" in infos[0]["mpi_library"] or "Open MPI" in infos[0]["mpi_library"]
    mec.execute("rank = comm.Get_rank()")
    assert mec.pull("rank") == [0, 1, 2, 3]
    assert [q["mpi_rank"] for q in mec.queue_status()] == [0, 1, 2, 3]
    status = cluster.ipcluster("status")
    assert re.search(r"\n\s+3/r3 .* idle ", status.stdout), status.stdout + status.stderr


def test_allreduce_through_execute(mpi_cluster):
    _, mec = mpi_cluster
    mec.execute("total = comm.allreduce(comm.rank)")
    assert mec.pull("total") == [6, 6, 6, 6]


def test_wrapped_c_library_built_with_mpicc(mpi_cluster, tmp_path):
    _, mec = mpi_cluster
    library = mpi.build_shared_library(EXAMPLES / "allreduce.c", tmp_path / "liballreduce.so")
    mec.push({"examples": str(EXAMPLES), "library": str(library)})
    mec.execute("import sys; sys.path.insert(0, examples); import allreduce\n"
                "lib = allreduce.load(library)\n"
                "c_total = allreduce.allreduce_sum(lib, float(comm.rank), comm)\n"
                "c_array = allreduce.allreduce_sum_array(lib, np.arange(3.0) * comm.rank, comm)")
    assert mec.pull("c_total") == [6.0] * 4
    for array in mec.pull("c_array"):
        np.testing.assert_array_equal(array, [0.0, 6.0, 12.0])


def test_scatter_numpy_reduce_with_mpi_gather(mpi_cluster):
    _, mec = mpi_cluster
    a = np.arange(1001, dtype=np.float64)
    mec.scatter("part", a)
    mec.execute("partial = np.array([part.sum()]); whole = np.zeros(1)\n"
                "comm.Allreduce(partial, whole, op=MPI.SUM)\n"
                "at_root = comm.reduce(part.sum(), op=MPI.SUM, root=0)\n"
                "doubled = part * 2")
    assert [w[0] for w in mec.pull("whole")] == [a.sum()] * 4
    assert mec.pull("at_root") == [a.sum(), None, None, None]
    np.testing.assert_array_equal(mec.gather("doubled"), a * 2)


def test_distarray_statistics_fold_with_mpi_allreduce(mpi_cluster):
    _, mec = mpi_cluster
    a = np.random.default_rng(7).normal(size=(1001, 2))
    mec.scatter("d", a)
    x = mec.distarray("d")
    assert np.isclose(x.std(), a.std()) and x.argmax() == a.argmax()
    np.testing.assert_array_equal(x.histogram(9, (-2.0, 2.0))[0],
                                  np.histogram(a, 9, (-2.0, 2.0))[0])
    mec.execute("ranks = [comm.Get_rank()]")
    assert mec.reduce(lambda p, q: p + q, "ranks") == [0, 1, 2, 3]  # in rank order
    mec.allreduce(lambda p, q: p + q, "ranks", out="all_ranks")
    assert mec.pull("all_ranks") == [[0, 1, 2, 3]] * 4
    from ipython1.engine import reduction

    assert mec.apply(lambda: reduction.last_path) == ["mpi"] * 4
    # A subset of the job is not the whole communicator: the tree among engines.
    assert mec.reduce(lambda p, q: p + q, "ranks", targets=[1, 3]) == [1, 3]
    assert mec.apply(lambda: reduction.last_path, targets=[1, 3]) == ["tree"] * 2


def test_collective_waiting_for_a_rank_is_visible_and_recoverable(mpi_cluster):
    cluster, mec = mpi_cluster
    # mpi4py's lowercase allreduce holds the GIL while it waits: engines 0-2
    # answer no ping until engine 3 joins, for longer than the controller's
    # disconnect timeout here.
    waiting = mec.execute("late = comm.allreduce(1)", targets=[0, 1, 2], block=False)
    wait_until(lambda: all(q["running"] for q in mec.queue_status(targets=[0, 1, 2])), 10,
               "engines 0-2 to enter the collective")
    stalled_since = time.monotonic()
    while time.monotonic() - stalled_since < 3 * DISCONNECT_TIMEOUT:
        status = mec.queue_status()
        assert [bool(q["running"]) for q in status] == [True, True, True, False]
        assert status[0]["running"]["description"] == "late = comm.allreduce(1)"
        time.sleep(0.2)  # polling on purpose: the collective must outlast the timeout
    assert mec.get_ids() == [0, 1, 2, 3]
    # Recover: run the missing command on the rank that has not called it.
    mec.execute("late = comm.allreduce(1)", targets=3)
    waiting.get_result(timeout=30)
    assert mec.pull("late") == [4, 4, 4, 4]
    assert mec.execute("'still connected'", targets=0).output == "still connected"


def test_nonblocking_collective_can_be_interrupted_then_completed(mpi_cluster):
    _, mec = mpi_cluster
    mec.execute("send = np.ones(1); recv = np.zeros(1)")
    mec.execute("req = comm.Iallreduce(send, recv)", targets=[0, 1, 2])  # returns at once
    polling = mec.execute("import time\nwhile not req.Test(): time.sleep(0.005)",
                          targets=[0, 1, 2], block=False)
    for engine_id in (0, 1, 2):
        # True once the interrupt reached the running loop (False while not yet started).
        wait_until(lambda e=engine_id: mec.interrupt(targets=e), 10, f"interrupt {engine_id}")
    with pytest.raises(Exception, match="KeyboardInterrupt"):
        polling.get_result(timeout=30)
    # The request is still pending on 0-2: the late rank joins, the others wait for it.
    mec.execute("req = comm.Iallreduce(send, recv)", targets=3)
    mec.execute("req.Wait()")
    assert [r[0] for r in mec.pull("recv")] == [4.0] * 4


def test_controller_and_client_never_load_mpi(mpi_cluster):
    cluster, mec = mpi_cluster
    from ipython1.common.clusterdir import read_pid

    controller = read_pid(cluster.dir.pid_file("ipcontroller"))
    assert controller and "mpi4py" not in _maps(controller)
    assert "libmpi" not in _maps(controller)
    # This test process is a client that ran every command above.
    assert "mpi4py" not in sys.modules and "libmpi" not in _maps(os.getpid())
    engine = mec.engine_info(targets=0)[0]["pid"]
    assert "libmpi" in _maps(engine)  # the check can see MPI where it is loaded


def test_ipcluster_stop_ends_every_rank(mpi_cluster):
    # Last in this module: it stops the shared cluster.
    cluster, mec = mpi_cluster
    ranks = [info["pid"] for info in mec.engine_info()]
    proc = cluster.ipcluster("stop", "--grace", "10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_until(lambda: not any(pid_alive(p) for p in ranks), 15, "every rank to exit")


def test_a_dying_rank_fails_every_engine_of_its_job(make_cluster):
    cluster = make_cluster(3, "--mpi")
    mec = cluster.client(timeout=60)
    cluster.pids += [info["pid"] for info in mec.engine_info()]
    cluster.start_engine()  # not MPI: it must keep working
    wait_until(lambda: mec.get_ids() == [0, 1, 2, 3], 60, "the extra engine")
    victim = mec.engine_info(targets=1)[0]["pid"]
    pending = [mec.execute("import time; time.sleep(60)", targets=i, block=False)
               for i in (0, 1, 2)]
    queued = mec.execute("'never runs'", targets=0, block=False)
    wait_until(lambda: all(q["running"] for q in mec.queue_status(targets=[0, 1, 2])), 10,
               "the ranks to be busy")
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    messages = []
    for engine_id, p in zip((0, 1, 2, 0), (*pending, queued), strict=True):
        with pytest.raises(EngineError) as info:
            p.get_result(timeout=20)
        assert info.value.engine_id == engine_id
        assert f"engine {engine_id} (MPI rank {engine_id} of 3)" in str(info.value)
        messages.append(str(info.value))
    assert time.monotonic() - t0 < 10
    # The first death noticed is plain; the job's other engines say why they went.
    assert sum("MPI job" in m for m in messages[:3]) >= 2, messages
    assert mec.get_ids() == [3]
    assert mec.execute("6 * 7", targets=3).output == 42
    with pytest.raises(Exception, match="no engine with id 0"):
        mec.execute("1", targets=0)


def test_twistd_ipengine_mpi_and_taken_ids(make_cluster, tmp_path):
    # A plain engine holds id 0; the ranks ask for 0 and 1 and get unique ids.
    cluster = make_cluster(1)
    mec = cluster.client(timeout=60)
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    command = mpi.mpiexec_command(2, [], mpi.find_mpiexec(), [])
    launcher = command[:command.index(sys.executable)]  # mpiexec -n 2 [flags]
    engine = ["-n", "--pidfile=", "--logfile", str(tmp_path / "twistd.log"), "ipengine",
              "--profile", cluster.profile, "--mpi", "mpi4py"]
    job = subprocess.Popen(launcher + twistd + engine, env=cluster.env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(mec.get_ids()) == 3, 60, "two twistd MPI engines")
        infos = mec.engine_info(targets=[1, 2])
        assert sorted(i["mpi_rank"] for i in infos) == [0, 1]
        assert "mpi_rank" not in mec.engine_info(targets=0)[0]
        mec.execute("from mpi4py import MPI; s = MPI.COMM_WORLD.allreduce(7)", targets=[1, 2])
        assert mec.pull("s", targets=[1, 2]) == [14, 14]
        cluster.pids += [i["pid"] for i in infos]
    finally:
        kill_all([job.pid])
        job.wait(10)


def _fake_mpi4py(root: Path, init: str) -> dict[str, str]:
    """An environment whose mpi4py fails the way a broken install does."""
    package = root / "mpi4py"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(init)
    return {"PYTHONPATH": f"{root}{os.pathsep}{ROOT}"}


@pytest.mark.parametrize("init, message", [
    ("raise ModuleNotFoundError(\"No module named 'mpi4py'\")",
     "mpi4py is not installed: pip install 'ipython1[mpi]'"),
    ("class rc: pass\ndef __getattr__(name):\n    raise RuntimeError('cannot load MPI library')",
     "mpi4py could not load an MPI library (cannot load MPI library)"),
])
def test_ipengine_mpi_without_mpi_says_what_to_install(tmp_path, init, message):
    env = dict(os.environ, IPYTHON1_DIR=str(tmp_path), **_fake_mpi4py(tmp_path / "fake", init))
    done = subprocess.run([sys.executable, "-m", "ipython1.scripts.ipengine", "--mpi", "mpi4py",
                           "--connect-timeout", "1"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert message in done.stderr and "pip install" in done.stderr


def test_ipcluster_reports_why_mpi_engines_did_not_register(tmp_path):
    cluster = Cluster(tmp_path / "c")
    cluster.env.update(_fake_mpi4py(tmp_path / "fake",
                                    "raise ModuleNotFoundError(\"No module named 'mpi4py'\")"))
    try:
        t0 = time.monotonic()
        done = cluster.ipcluster("start", "-n", "2", "--mpi", "--daemon", timeout=60)
        cluster.record_pids()
        assert done.returncode == 1
        assert "could not start the cluster: an engine exited" in done.stdout
        assert "mpi4py is not installed: pip install 'ipython1[mpi]'" in done.stdout
        assert time.monotonic() - t0 < 30
        assert not cluster.dir.controller_running()
    finally:
        cluster.stop()


def test_ipcluster_bad_mpiexec_fails_before_starting_anything(tmp_path):
    cluster = Cluster(tmp_path / "c")
    try:
        done = cluster.ipcluster("start", "-n", "2", "--mpi", "--mpiexec", str(tmp_path / "nope"),
                                 timeout=60)
        assert done.returncode == 1
        assert f"cannot start MPI engines: --mpiexec '{tmp_path / 'nope'}'" in done.stdout
        assert "is not an executable file" in done.stdout
        assert not cluster.dir.pid_file("ipcontroller").exists()
    finally:
        cluster.stop()



def test_ipcluster_reports_an_mpiexec_that_does_not_match_mpi4py(tmp_path):
    # A launcher of another MPI starts n independent singletons of size 1.
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && exit 0\nshift; n=$1; shift\n"
                    "for i in $(seq $n); do \"$@\" & done\nwait\n")
    fake.chmod(0o755)
    cluster = Cluster(tmp_path / "c")
    try:
        done = cluster.ipcluster("start", "-n", "2", "--mpi", "--daemon", "--mpiexec", str(fake),
                                 timeout=90)
        cluster.record_pids()
        assert done.returncode == 1
        assert "the engines report MPI job sizes [1], not 2" in done.stdout, done.stdout
        assert "--mpiexec PATH" in done.stdout
        # The fake mpiexec passed no signal on: its engines (which outlive a lost
        # controller) must still be gone, not left waiting to rejoin.
        def ours() -> list[int]:
            found = []
            for proc in psutil.process_iter(["pid"]):
                try:
                    if proc.environ().get("IPYTHON1_DIR") == str(cluster.root):
                        found.append(proc.pid)
                except (psutil.Error, OSError):
                    pass
            return found

        wait_until(lambda: not ours(), timeout=10, message="no engine of the failed start left")
    finally:
        cluster.stop()


def test_restart_engines_restarts_the_whole_mpi_job(make_cluster):
    cluster = make_cluster(2, "--mpi", "--restart-engines")
    mec = cluster.client(timeout=60)
    old = {info["engine_id"]: info["pid"] for info in mec.engine_info()}
    cluster.pids += list(old.values())
    mec.execute("x = 1")
    os.kill(old[1], signal.SIGKILL)
    # A single rank cannot be replaced: the supervisor starts the job again,
    # and its ranks take their ids back.
    def new_job() -> bool:
        try:
            pids = {i["pid"] for i in mec.engine_info()}
        except NoEnginesRegistered:  # between the two jobs
            return False
        return len(pids) == 2 and not pids & set(old.values())

    wait_until(new_job, 60, "a new MPI job")
    infos = mec.engine_info()
    cluster.pids += [info["pid"] for info in infos]
    assert [(i["engine_id"], i["mpi_rank"]) for i in infos] == [(0, 0), (1, 1)]
    assert mec.apply(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.allreduce(1)) == [2, 2]
    assert not any("x" in keys for keys in mec.keys())

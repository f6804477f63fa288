"""ipython1.Cluster from Python, and resizing it with ipcluster engines add/remove."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, kill_all, pid_alive, wait_until


@pytest.fixture
def ipython1_dir(tmp_path, monkeypatch):
    """A private cluster directory; every process started in it is stopped at the end."""
    monkeypatch.setenv("IPYTHON1_DIR", str(tmp_path))
    monkeypatch.setenv("IPYTHON1_NONINTERACTIVE", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    seen: list[int] = []
    yield tmp_path, seen
    from ipython1.common.clusterdir import ClusterDir, read_pid
    from ipython1.scripts.ipcluster import engine_pids

    for profile in ("resize",):
        d = ClusterDir(profile)
        seen += [read_pid(d.pid_file("ipcontroller")) or 0, *engine_pids(d)]
    kill_all([p for p in seen if p])


def _ipcluster(*args):
    return subprocess.run([sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile",
                           "resize", *args], capture_output=True, text=True, timeout=120)


def test_cluster_context_manager_and_resizing(ipython1_dir):
    import ipython1
    from ipython1.common.clusterdir import ClusterDir, read_pid
    from ipython1.scripts.ipcluster import engine_pids

    _, seen = ipython1_dir
    cluster_dir = ClusterDir("resize")
    cluster = ipython1.Cluster(n=2, profile="resize", timeout=60)
    with cluster as mec:
        seen += cluster.pids
        assert cluster.running and mec.get_ids() == [0, 1]
        controller = read_pid(cluster_dir.pid_file("ipcontroller"))

        added = _ipcluster("engines", "add", "2")
        assert added.returncode == 0, added.stdout + added.stderr
        assert "added 2 engine(s): ids 2, 3" in added.stdout
        assert mec.wait_for_engines(4, timeout=60) == [0, 1, 2, 3]
        seen += engine_pids(cluster_dir)
        pids = {i["engine_id"]: i["pid"] for i in mec.engine_info()}
        assert set(pids.values()) <= set(engine_pids(cluster_dir))  # stop ends them too

        removed = _ipcluster("engines", "remove", "1,3")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert "removed 2 engine(s): ids 1, 3" in removed.stdout
        assert mec.get_ids() == [0, 2]
        wait_until(lambda: not pid_alive(pids[1]) and not pid_alive(pids[3]), 30,
                   "the removed engines to exit")
        assert pids[1] not in engine_pids(cluster_dir)
        assert mec.apply(os.getpid) == [pids[0], pids[2]]

        bad = _ipcluster("engines", "remove", "7")
        assert bad.returncode == 1 and "no engine" in bad.stdout.lower()
        assert _ipcluster("engines", "add", "0").returncode == 2

        assert cluster.add_engines(1) == [4]
        seen += engine_pids(cluster_dir)
        assert cluster.remove_engines([0]) == [0]
        assert mec.get_ids() == [2, 4]
    assert not cluster.running
    wait_until(lambda: not any(pid_alive(p) for p in [controller, *pids.values()]), 30,
               "every process of the cluster to exit")
    with pytest.raises(RuntimeError, match="ipcluster start"):
        ipython1.Cluster(profile="resize").add_engines(1)


def test_cluster_start_failure_says_why(ipython1_dir):
    import ipython1

    with pytest.raises(ValueError):
        ipython1.Cluster(n=0)
    with pytest.raises(ValueError, match="engines"):
        ipython1.Cluster(engines="ssh-to-the-moon")
    spec = ipython1.Cluster(engines="slurm", queue="short", engines_per_job=2)
    assert spec.engines_kind == "slurm"
    assert spec.launch_options == {"queue": "short", "engines-per-job": 2}
    assert ipython1.Cluster(engines="mpi").engines_kind == "mpiexec"
    first = ipython1.Cluster(n=1, profile="resize", timeout=60).start()
    _, seen = ipython1_dir
    seen += first.pids
    try:
        with pytest.raises(RuntimeError, match="already running"):
            ipython1.Cluster(n=1, profile="resize").start()
        tc = first.task_client(timeout=60)
        assert tc.map(abs, [-1, -2]) == [1, 2]
    finally:
        first.stop()
    assert not first.running

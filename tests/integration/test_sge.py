"""ipcluster --engines sge against a real Grid Engine cell (sge_qmaster + sge_execd here).

Marked ``batch``: CI runs these after the default suite (see .ci/run).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.batchsystems import SGETestCluster, sge_unavailable
from tests.conftest import Cluster, pid_alive, wait_until

pytestmark = [
    pytest.mark.batch,
    pytest.mark.skipif(bool(sge_unavailable()), reason=f"needs Grid Engine: {sge_unavailable()}"),
]


@pytest.fixture(scope="module")
def sge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SGETestCluster]:
    with SGETestCluster(tmp_path_factory.mktemp("sge")) as cell:
        yield cell


@pytest.fixture
def cluster(sge: SGETestCluster, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "ipython1")
    c.env.update({k: v for k, v in sge.env.items() if k.startswith("SGE_")})
    try:
        yield c
    finally:
        c.stop()


def test_engines_as_an_array_job_status_and_stop(sge: SGETestCluster, cluster: Cluster) -> None:
    started = cluster.ipcluster("start", "-n", "3", "--engines", "sge", "--queue", "all.q",
                                "--time", "10", "--daemon", "--timeout", "90")
    cluster.record_pids()
    assert started.returncode == 0, started.stdout + started.stderr + sge.logs()
    mec = cluster.client()
    assert mec.get_ids() == [0, 1, 2]
    tasks = mec.apply(lambda: (__import__("os").environ["JOB_ID"],
                               __import__("os").environ["SGE_TASK_ID"]))
    job = tasks[0][0]
    assert sorted(tasks) == [(job, "1"), (job, "2"), (job, "3")]
    pids = mec.apply(os.getpid)
    script = (cluster.dir.path / "jobs" / "sge-engines-0.sh").read_text()
    assert "#$ -t 1-3" in script and "#$ -q all.q" in script and "#$ -l h_rt=600" in script

    status = cluster.ipcluster("status")
    assert f"sge job {job}: RUNNING, 3 engine(s)" in status.stdout, status.stdout

    stopped = cluster.ipcluster("stop")
    assert f"sge: cancelled job(s) {job}" in stopped.stdout, stopped.stdout
    wait_until(lambda: job not in sge.jobs(), 30, "the job to leave qstat")
    # qdel killed every task (engines that merely lost the controller would exit 0).
    wait_until(lambda: sge.run("qacct", "-j", job).stdout.count("exit_status  137") == 3, 30,
               "qacct to show the three tasks killed")
    wait_until(lambda: not any(pid_alive(p) for p in pids), 30, "the engines to exit")


def test_a_failed_job_is_reported_with_its_output(sge: SGETestCluster, cluster: Cluster) -> None:
    started = cluster.ipcluster("start", "-n", "1", "--engines", "sge", "--daemon",
                                "--ipengine", "/nonexistent/ipengine", "--timeout", "60")
    cluster.record_pids()
    assert started.returncode == 1, started.stdout
    job = re.search(r"sge job (\d+) is FAILED \(exit status 127\)", started.stdout)
    assert job, started.stdout
    assert f"{cluster.dir.log}/sge-{job.group(1)}.1.out" in started.stdout
    assert "/nonexistent/ipengine" in started.stdout  # the shell's complaint, from the file
    assert not cluster.dir.controller_running()

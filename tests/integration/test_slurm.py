"""ipcluster --engines slurm against a real Slurm (slurmctld + slurmd + munged on this machine).

Marked ``batch``: CI runs these after the default suite (see .ci/run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.batchsystems import SlurmTestCluster, slurm_unavailable
from tests.conftest import Cluster, pid_alive, wait_until

pytestmark = [
    pytest.mark.batch,
    pytest.mark.skipif(bool(slurm_unavailable()), reason=f"needs Slurm: {slurm_unavailable()}"),
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmTestCluster]:
    with SlurmTestCluster(tmp_path_factory.mktemp("slurm")) as s:
        yield s


@pytest.fixture
def cluster(slurm: SlurmTestCluster, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "ipython1")
    c.env["SLURM_CONF"] = slurm.env["SLURM_CONF"]
    try:
        yield c
    finally:
        c.stop()


def _job_ids(text: str) -> list[str]:
    return re.findall(r"slurm job (\d+)", text)


def test_engines_in_several_jobs_status_and_stop(slurm: SlurmTestCluster,
                                                 cluster: Cluster) -> None:
    started = cluster.ipcluster(
        "start", "-n", "4", "--engines", "slurm", "--engines-per-job", "2", "--time", "10",
        "--partition", "debug", "--sbatch-arg=--mem=100", "--daemon", "--timeout", "90")
    cluster.record_pids()
    assert started.returncode == 0, started.stdout + started.stderr + slurm.logs()
    mec = cluster.client()
    assert mec.get_ids() == [0, 1, 2, 3]
    # Every engine runs in a Slurm job step, two per job.
    jobs = mec.apply(lambda: __import__("os").environ["SLURM_JOB_ID"])
    assert len(set(jobs)) == 2 and sorted(jobs.count(j) for j in set(jobs)) == [2, 2]
    pids = mec.apply(os.getpid)

    status = cluster.ipcluster("status")
    assert status.returncode == 0, status.stdout
    for job in set(jobs):
        assert f"slurm job {job}: RUNNING, 2 engine(s)" in status.stdout
    script = (cluster.dir.path / "jobs" / "slurm-engines-0.sh").read_text()
    assert "#SBATCH --time=10" in script and "#SBATCH --mem=100" in script
    assert "#SBATCH --partition=debug" in script

    stopped = cluster.ipcluster("stop")
    assert stopped.returncode == 0
    assert f"cancelled job(s) {', '.join(sorted(set(jobs), key=int))}" in stopped.stdout
    for job in set(jobs):
        wait_until(lambda job=job: slurm.job_state(job) == "CANCELLED", 30, f"job {job} cancelled")
    wait_until(lambda: not any(pid_alive(p) for p in pids), 30, "the engines to exit")


def test_a_failed_job_is_reported_with_its_output(slurm: SlurmTestCluster,
                                                  cluster: Cluster) -> None:
    started = cluster.ipcluster("start", "-n", "2", "--engines", "slurm", "--daemon",
                                "--ipengine", "/nonexistent/ipengine", "--timeout", "60")
    cluster.record_pids()
    assert started.returncode == 1
    job = _job_ids(started.stdout)[0]
    assert f"slurm job {job} is FAILED" in started.stdout
    out = cluster.dir.log / f"slurm-{job}.out"
    assert str(out) in started.stdout
    assert "/nonexistent/ipengine" in started.stdout  # srun's own complaint, from the file
    assert not cluster.dir.controller_running()


def test_inside_an_allocation_engines_are_an_srun_step(slurm: SlurmTestCluster,
                                                       cluster: Cluster) -> None:
    ipcluster = f"{sys.executable} -m ipython1.scripts.ipcluster --profile {cluster.profile}"
    check = ("from ipython1.client.blocking import MultiEngineClient as M; import os; "
             "m = M(profile='test'); "
             "print('STEPS', sorted(m.apply(lambda: os.environ['SLURM_JOB_ID'] + '.' "
             "+ os.environ['SLURM_STEP_ID']))); m.close()")
    script = (f"{ipcluster} start -n 2 --engines slurm --daemon --timeout 90 && "
              f"squeue -h -o %i && {sys.executable} -c \"{check}\"; "
              f"{ipcluster} stop")
    proc = subprocess.run(["salloc", "-n", "2", "--", "sh", "-c", script], env=cluster.env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    allocation = re.search(r"Granted job allocation (\d+)", out).group(1)  # type: ignore[union-attr]
    # Nothing was submitted: the only job is the allocation itself.
    assert re.findall(r"^(\d+)$", proc.stdout, re.M) == [allocation]
    steps = re.search(r"STEPS \[(.*)\]", out).group(1)  # type: ignore[union-attr]
    assert steps.count(f"'{allocation}.0'") == 2, out
    assert "slurm-step: stopped 1 process(es)" in out



@pytest.mark.mpi
def test_mpi_engines_with_mpiexec_inside_an_allocation(slurm: SlurmTestCluster,
                                                       cluster: Cluster) -> None:
    # MPICH's mpiexec (Hydra) starts its ranks through srun inside an allocation.
    pytest.importorskip("mpi4py")
    ipcluster = f"{sys.executable} -m ipython1.scripts.ipcluster --profile {cluster.profile}"
    check = ("from ipython1.client.blocking import MultiEngineClient as M; "
             "m = M(profile='test'); "
             "m.execute('import os; from mpi4py import MPI; w = MPI.COMM_WORLD; "
             "r = (w.Get_rank(), w.Get_size(), w.allreduce(w.Get_rank()), "
             "os.environ[\\'SLURM_JOB_ID\\'])'); "
             "print('RANKS', m.pull('r')); m.close()")
    script = (f"{ipcluster} start -n 3 --engines mpiexec --daemon --timeout 90 && "
              f"{sys.executable} -c \"{check}\"; {ipcluster} stop")
    proc = subprocess.run(["salloc", "-n", "3", "--", "sh", "-c", script], env=cluster.env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    job = re.search(r"Granted job allocation (\d+)", out).group(1)  # type: ignore[union-attr]
    # Engine ids are ranks of one MPI world of 3, all inside the allocation.
    assert f"RANKS [(0, 3, 3, '{job}'), (1, 3, 3, '{job}'), (2, 3, 3, '{job}')]" in out, out

def test_queued_jobs_join_when_they_start(slurm: SlurmTestCluster, cluster: Cluster) -> None:
    # Each job takes 6 of the node's 8 CPUs: the second waits for the first to end.
    started = cluster.ipcluster("start", "-n", "4", "--engines", "slurm", "--engines-per-job",
                                "2", "--sbatch-arg=--cpus-per-task=3", "--daemon",
                                "--timeout", "15")
    cluster.record_pids()
    assert started.returncode == 0, started.stdout + started.stderr
    first, second = _job_ids(cluster.ipcluster("status").stdout)
    assert "2 of 4 engines registered after 15 s; still queued:" in started.stdout
    assert f"slurm job {second} (2 engines) is PENDING: Resources" in started.stdout
    assert "their engines join when the jobs start" in started.stdout
    mec = cluster.client()
    assert mec.get_ids() == [0, 1]
    slurm.run("scancel", first)
    wait_until(lambda: mec.get_ids() == [2, 3], 60, "the second job's engines to join")
    assert mec.apply(lambda: __import__("os").environ["SLURM_JOB_ID"]) == [second, second]


def test_a_template_of_ones_own(slurm: SlurmTestCluster, cluster: Cluster,
                                tmp_path: Path) -> None:
    template = tmp_path / "engines.sh"
    template.write_text("#!/bin/sh\n${directives}\n#SBATCH --nodes=1\n"
                        "echo \"prepared job $SLURM_JOB_ID for ${n} engines\"\n"
                        "${fork_command}\n")
    started = cluster.ipcluster("start", "-n", "2", "--engines", "slurm", "--template",
                                str(template), "--daemon", "--timeout", "90")
    cluster.record_pids()
    assert started.returncode == 0, started.stdout + started.stderr
    assert "note: the controller listens on 127.0.0.1 only" in started.stdout
    mec = cluster.client()
    assert mec.get_ids() == [0, 1]
    # Both engines came from one process's --fork, in one job: the template ran.
    job = mec.apply(lambda: __import__("os").environ["SLURM_JOB_ID"])[0]
    wait_until(lambda: f"prepared job {job} for 2 engines"
               in (cluster.dir.log / f"slurm-{job}.out").read_text(), 10, "the template's echo")
    assert "--fork 2" in (cluster.dir.path / "jobs" / "slurm-engines-0.sh").read_text()

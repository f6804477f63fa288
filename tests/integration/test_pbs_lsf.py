"""ipcluster --engines pbs and lsf through stand-in qsub/qstat/qdel and bsub/bjobs/bkill.

No PBS or LSF server can be installed here: tests/fakebatch.py records each
command the launcher issues and runs each submitted script at once, so the
rendered scripts really start engines that register. Marked ``batch``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Cluster, pid_alive, wait_until

pytestmark = pytest.mark.batch

COMMANDS = ("qsub", "qstat", "qdel", "bsub", "bjobs", "bkill")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Cluster, Path]]:
    bin_dir, state = tmp_path / "bin", tmp_path / "fakebatch"
    bin_dir.mkdir()
    state.mkdir()
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT}/tests/fakebatch.py {name} "$@"\n')
        path.chmod(0o755)
    c = Cluster(tmp_path / "ipython1")
    c.env.update(PATH=f"{bin_dir}{os.pathsep}{c.env['PATH']}", FAKE_BATCH_DIR=str(state))
    try:
        yield c, state
    finally:
        c.stop()
        for pid_file in state.glob("job-*.pid"):  # whatever a job left running
            try:
                os.killpg(int(pid_file.read_text()), 9)
            except ProcessLookupError:
                pass


def calls(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "calls").read_text().splitlines()]


def test_pbs_jobs_start_engines_and_are_deleted(fake: tuple[Cluster, Path]) -> None:
    cluster, state = fake
    started = cluster.ipcluster("start", "-n", "2", "--engines", "pbs", "--queue", "batch",
                                "--time", "5", "--engines-per-job", "1", "--daemon",
                                "--timeout", "90")
    cluster.record_pids()
    assert started.returncode == 0, started.stdout + started.stderr
    scripts = [str(cluster.dir.path / "jobs" / f"pbs-engines-{i}.sh") for i in range(2)]
    assert [c["argv"] for c in calls(state) if c["argv"][0] == "qsub"] == [
        ["qsub", scripts[0]], ["qsub", scripts[1]]]
    text = Path(scripts[0]).read_text().splitlines()
    for line in ["#PBS -q batch", "#PBS -l walltime=0:05:00", "#PBS -l nodes=1:ppn=1",
                 "#PBS -N ipengine-test"]:
        assert line in text
    mec = cluster.client()
    assert mec.get_ids() == [0, 1]
    jobs = sorted(mec.apply(lambda: __import__("os").environ["PBS_JOBID"]))
    assert jobs == ["1.fake", "2.fake"]
    pids = mec.apply(os.getpid)

    status = cluster.ipcluster("status")
    assert "pbs job 1.fake: RUNNING, 1 engine(s)" in status.stdout, status.stdout
    assert "pbs job 2.fake: RUNNING, 1 engine(s)" in status.stdout

    stopped = cluster.ipcluster("stop")
    assert "pbs: cancelled job(s) 1.fake, 2.fake" in stopped.stdout, stopped.stdout
    assert calls(state)[-1]["argv"] == ["qdel", "1.fake", "2.fake"]
    wait_until(lambda: not any(pid_alive(p) for p in pids), 30, "the engines to exit")


def test_lsf_job_reads_its_script_on_stdin_and_is_killed(fake: tuple[Cluster, Path]) -> None:
    cluster, state = fake
    started = cluster.ipcluster("start", "-n", "2", "--engines", "lsf", "--queue", "normal",
                                "--time", "1:00:00", "--daemon", "--timeout", "90")
    cluster.record_pids()
    assert started.returncode == 0, started.stdout + started.stderr
    bsub = [c for c in calls(state) if c["argv"][0] == "bsub"]
    assert [c["argv"] for c in bsub] == [["bsub"]]
    script = (cluster.dir.path / "jobs" / "lsf-engines-0.sh").read_text()
    assert bsub[0]["stdin"] == script
    for line in ["#BSUB -n 2", "#BSUB -q normal", "#BSUB -W 1:00", '#BSUB -R "span[hosts=1]"']:
        assert line in script.splitlines()
    mec = cluster.client()
    assert mec.get_ids() == [0, 1]
    assert mec.apply(lambda: __import__("os").environ["LSB_JOBID"]) == ["1", "1"]
    pids = mec.apply(os.getpid)

    status = cluster.ipcluster("status")
    assert "lsf job 1: RUNNING, 2 engine(s)" in status.stdout, status.stdout
    stopped = cluster.ipcluster("stop")
    assert "lsf: cancelled job(s) 1" in stopped.stdout, stopped.stdout
    assert calls(state)[-1]["argv"] == ["bkill", "1"]
    wait_until(lambda: not any(pid_alive(p) for p in pids), 30, "the engines to exit")


def test_lsf_job_that_exits_is_reported(fake: tuple[Cluster, Path]) -> None:
    cluster, state = fake
    started = cluster.ipcluster("start", "-n", "1", "--engines", "lsf", "--daemon",
                                "--ipengine", "/nonexistent/ipengine", "--timeout", "60")
    assert started.returncode == 1
    assert "lsf job 1 is DONE" in started.stdout
    assert f"{cluster.dir.log}/lsf-1.out" in started.stdout
    assert "/nonexistent/ipengine" in started.stdout

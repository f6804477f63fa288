"""Launchers' pure logic: host lists, wall times, job scripts, scheduler commands and replies."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ipython1 import cluster
from ipython1.cluster.batch import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    BatchOptions,
    format_hms,
    parse_duration,
    split_jobs,
)
from ipython1.cluster.launcher import EngineCommand, LaunchError
from ipython1.cluster.lsf import LSFLauncher
from ipython1.cluster.pbs import PBSLauncher
from ipython1.cluster.sge import SGELauncher, parse_qacct, parse_qstat
from ipython1.cluster.slurm import SlurmLauncher, SlurmStepLauncher, parse_scontrol
from ipython1.cluster.ssh import (
    HostSlots,
    assign,
    parse_hosts,
    read_hostfile,
    remote_engine_command,
    remote_stop_command,
    ssh_argv,
)
from ipython1.common.clusterdir import ClusterDir


class FakeScheduler:
    """Stand in for sbatch/qsub/bsub & co: record each command, answer from a script."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.answers = answers or {}

    def __call__(self, argv: list[str], input: str | None = None,
                 timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), input))
        answer = self.answers.get(argv[0], "")
        if callable(answer):
            answer = answer(argv)
        code, out = answer if isinstance(answer, tuple) else (0, answer)
        return subprocess.CompletedProcess(argv, code, out, "refused" if code else "")


@pytest.fixture
def cdir(tmp_path: Path) -> ClusterDir:
    return ClusterDir("lab", root=tmp_path).create()


@pytest.fixture
def engine(cdir: ClusterDir) -> EngineCommand:
    return EngineCommand.for_cluster(cdir, connect_timeout=30, ipengine="/opt/py -m eng")


# -- wall times, job splitting ----------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("90", 5400), ("1:30:00", 5400), ("30:15", 1815), ("2-0", 172800), ("1-2:03:04", 93784),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "1h", "1:2:3:4", "-5"])
def test_parse_duration_rejects_what_no_scheduler_takes(bad: str) -> None:
    with pytest.raises(ValueError, match="H:MM:SS"):
        parse_duration(bad)


def test_format_hms() -> None:
    assert format_hms(93784) == "26:03:04"


def test_split_jobs() -> None:
    assert split_jobs(10, 4) == [4, 4, 2]
    assert split_jobs(8, 4) == [4, 4]
    assert split_jobs(3, None) == [3]
    assert split_jobs(3, 8) == [3]
    with pytest.raises(LaunchError):
        split_jobs(3, 0)


# -- ssh hosts --------------------------------------------------------------------

def test_parse_hosts_counts_users_and_ipv6() -> None:
    assert parse_hosts("h1:4, alice@h2:2,h3,[fd77::11]:3") == [
        HostSlots("h1", 4), HostSlots("alice@h2", 2), HostSlots("h3", 1),
        HostSlots("fd77::11", 3)]


@pytest.mark.parametrize("bad", ["h1:0", "h1:x", ",", "h1:2:3"])
def test_parse_hosts_rejects(bad: str) -> None:
    with pytest.raises(LaunchError):
        parse_hosts(bad)


def test_hostfile_takes_both_forms_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("# our nodes\nnode1:4\nnode2 slots=2  # Open MPI form\n\nnode3\n")
    assert read_hostfile(str(path)) == [HostSlots("node1", 4), HostSlots("node2", 2),
                                        HostSlots("node3", 1)]
    with pytest.raises(LaunchError, match="cannot read --hostfile"):
        read_hostfile(str(tmp_path / "missing"))


def test_assign_fills_hosts_in_order() -> None:
    hosts = parse_hosts("a:4,b:4")
    assert assign(hosts, 6) == [HostSlots("a", 4), HostSlots("b", 2)]
    assert assign(hosts, None) == hosts
    assert assign(hosts, 3) == [HostSlots("a", 3)]
    with pytest.raises(LaunchError, match="offer 8 slots"):
        assign(hosts, 9)


def test_remote_command_reads_the_furl_from_stdin_never_argv(engine: EngineCommand) -> None:
    command = remote_engine_command(engine, 3, "0-h1")
    assert command.startswith("IFS= read -r IPYTHON1_ENGINE_FURL && export IPYTHON1_ENGINE_FURL")
    assert "pb://" not in command and "--furl-file" not in command
    words = shlex.split(command.split("&& exec ", 1)[1].replace("$", "\\$"))
    assert words[:3] == ["/opt/py", "-m", "eng"]
    assert words[words.index("--fork") + 1] == "3"
    assert words[words.index("--profile") + 1] == "lab"
    assert "cluster_lab/pid/ssh-engines-0-h1.pid" in command
    assert "ssh-engines-0-h1.pid" in remote_stop_command("lab", "0-h1")


def test_ssh_is_batch_mode_then_user_args() -> None:
    assert ssh_argv("h1", "true", ["-p", "2222"]) == [
        "ssh", "-o", "BatchMode=yes", "-p", "2222", "h1", "true"]


def test_ssh_needs_exactly_one_host_source(cdir: ClusterDir, engine: EngineCommand) -> None:
    with pytest.raises(LaunchError, match="--hosts"):
        cluster.make_launcher("ssh", cdir, engine, {}, {})
    with pytest.raises(LaunchError, match="one of them"):
        cluster.make_launcher("ssh", cdir, engine, {"hosts": "a", "hostfile": "f"}, {})


# -- Slurm ------------------------------------------------------------------------

def _slurm(cdir: ClusterDir, engine: EngineCommand, run: FakeScheduler,
           **options: Any) -> SlurmLauncher:
    launcher = cluster.make_launcher("slurm", cdir, engine, options, {}, run=run)
    assert isinstance(launcher, SlurmLauncher)
    return launcher


def test_slurm_script_has_every_option(cdir: ClusterDir, engine: EngineCommand) -> None:
    launcher = _slurm(cdir, engine, FakeScheduler(), partition="debug", account="phys",
                      time="1:30:30", qos="high", **{"sbatch-arg": ["--mem=4G", "--gres gpu:1"]})
    script = launcher.render(4)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    for directive in ["--job-name=ipengine-lab", "--ntasks=4", "--partition=debug",
                      "--account=phys", "--qos=high", "--time=91", "--mem=4G", "--gres gpu:1",
                      f"--output={cdir.log}/slurm-%j.out"]:
        assert f"#SBATCH {directive}" in lines
    assert lines[-1] == "srun " + engine.shell()
    assert f"--furl-file {cdir.security}/ipcontroller-engine.furl" in lines[-1]


def test_slurm_submits_jobs_of_k_and_keeps_scripts(cdir: ClusterDir,
                                                   engine: EngineCommand) -> None:
    ids = iter(["101", "102;cluster", "103"])
    run = FakeScheduler({"sbatch": lambda argv: next(ids)})
    launcher = _slurm(cdir, engine, run, **{"engines-per-job": 4})
    launcher.start(10)
    assert [argv for argv, _ in run.calls] == [
        ["sbatch", "--parsable", str(cdir.path / "jobs" / f"slurm-engines-{i}.sh")]
        for i in range(3)]
    assert [(j.id, j.engines) for j in launcher.jobs] == [("101", 4), ("102", 4), ("103", 2)]
    assert "--ntasks=2" in (cdir.path / "jobs" / "slurm-engines-2.sh").read_text()
    assert launcher.jobs[0].output == f"{cdir.log}/slurm-101.out"
    run.calls.clear()
    assert launcher.stop(1) == ["slurm: cancelled job(s) 101, 102, 103"]
    assert run.calls[-1] == (["scancel", "101", "102", "103"], None)


def test_slurm_refused_submission_says_why(cdir: ClusterDir, engine: EngineCommand) -> None:
    launcher = _slurm(cdir, engine, FakeScheduler({"sbatch": (1, "")}), partition="nope")
    with pytest.raises(LaunchError, match="sbatch --parsable .* failed .*refused"):
        launcher.start(2)


SCONTROL_FAILED = ("JobId=7 JobName=ipengine-lab UserId=me(1) JobState=FAILED "
                   "Reason=NonZeroExitCode Dependency=(null) ExitCode=1:0 "
                   "StdOut={out} StdErr={out}")


def test_slurm_failed_job_is_reported_with_its_output(cdir: ClusterDir,
                                                      engine: EngineCommand) -> None:
    out = cdir.log / "slurm-7.out"
    out.write_text("srun: error: task 0 launch failed: No such file or directory\n")
    run = FakeScheduler({"sbatch": "7", "scontrol": SCONTROL_FAILED.format(out=out)})
    launcher = _slurm(cdir, engine, run)
    launcher.start(2)
    message = launcher.failure()
    assert message is not None
    assert "slurm job 7 is FAILED (exit code 1:0, NonZeroExitCode)" in message
    assert str(out) in message and "task 0 launch failed" in message


def test_slurm_states_and_forgotten_jobs(cdir: ClusterDir, engine: EngineCommand) -> None:
    states = {"1": "JobState=PENDING Reason=Resources", "2": "JobState=RUNNING Reason=None"}
    run = FakeScheduler({
        "sbatch": lambda argv: str(len([c for c in run.calls if c[0][0] == "sbatch"])),
        "scontrol": lambda argv: (0, states[argv[-1]]) if argv[-1] in states else (1, "")})
    launcher = _slurm(cdir, engine, run, **{"engines-per-job": 1})
    launcher.start(3)
    assert launcher.status() == [
        f"slurm job 1: PENDING, 1 engine(s) (Resources), output {cdir.log}/slurm-1.out",
        f"slurm job 2: RUNNING, 1 engine(s), output {cdir.log}/slurm-2.out",
        f"slurm job 3: DONE, 1 engine(s) (no longer known to the scheduler), "
        f"output {cdir.log}/slurm-3.out"]
    assert launcher.waiting() == ["slurm job 1 (1 engines) is PENDING: Resources"]


def test_parse_scontrol() -> None:
    fields = parse_scontrol("JobId=5 JobState=COMPLETING Reason=None StdOut=/x/y.out")
    assert fields["JobState"] == "COMPLETING" and fields["StdOut"] == "/x/y.out"


def test_launcher_survives_as_a_record(cdir: ClusterDir, engine: EngineCommand) -> None:
    run = FakeScheduler({"sbatch": "42"})
    launcher = _slurm(cdir, engine, run, time="10")
    launcher.start(2)
    cluster.save_state(cdir, launcher)
    again = cluster.launcher_from_state(cdir, run=run)
    assert isinstance(again, SlurmLauncher)
    assert [j.id for j in again.jobs] == ["42"] and again.time_seconds == 600
    assert again.engine.argv() == engine.argv()
    cluster.clear_state(cdir)
    assert cluster.launcher_from_state(cdir) is None


def test_inside_an_allocation_slurm_uses_srun_without_submitting(
        cdir: ClusterDir, engine: EngineCommand) -> None:
    launcher = cluster.make_launcher("slurm", cdir, engine, {}, {"SLURM_JOB_ID": "77"})
    assert isinstance(launcher, SlurmStepLauncher)
    assert launcher.srun_argv(4) == ["srun", "--ntasks=4", "--kill-on-bad-exit=0",
                                     *engine.argv()]


# -- templates --------------------------------------------------------------------

def test_user_template(cdir: ClusterDir, engine: EngineCommand, tmp_path: Path) -> None:
    template = tmp_path / "t.sh"
    template.write_text("#!/bin/bash\n${directives}\nmodule load python\n"
                        "echo $SLURM_JOB_ID ${n} ${queue}\n${fork_command}\n")
    launcher = _slurm(cdir, engine, FakeScheduler(), template=str(template), queue="short")
    script = launcher.render(3)
    assert "#SBATCH --partition=short" in script
    assert "echo $SLURM_JOB_ID 3 short" in script  # shell variables pass through
    assert script.endswith(engine.shell("--fork", "3") + "\n")


def test_template_that_starts_no_engine_is_refused(cdir: ClusterDir, engine: EngineCommand,
                                                   tmp_path: Path) -> None:
    template = tmp_path / "t.sh"
    template.write_text("#!/bin/sh\necho hi\n")
    launcher = _slurm(cdir, engine, FakeScheduler(), template=str(template))
    with pytest.raises(LaunchError, match="never starts an engine"):
        launcher.render(1)


def test_slurm_only_options_are_refused_elsewhere(cdir: ClusterDir,
                                                  engine: EngineCommand) -> None:
    with pytest.raises(LaunchError, match="--partition is for --engines slurm"):
        cluster.make_launcher("sge", cdir, engine, {"partition": "x"}, {})
    with pytest.raises(LaunchError, match="invalid time"):
        cluster.make_launcher("pbs", cdir, engine, {"time": "soon"}, {})


# -- SGE, PBS, LSF ----------------------------------------------------------------

def test_sge_array_job(cdir: ClusterDir, engine: EngineCommand) -> None:
    run = FakeScheduler({"qsub": "55.1-3:1\n"})
    launcher = SGELauncher(cdir, engine, BatchOptions(queue="all.q", time="1:00:00"), run)
    launcher.start(3)
    script = Path(launcher.jobs[0].script).read_text()
    for line in ["#$ -t 1-3", "#$ -q all.q", "#$ -l h_rt=3600", "#$ -V",
                 f"#$ -o {cdir.log}/sge-$JOB_ID.$TASK_ID.out"]:
        assert line in script.splitlines()
    assert script.endswith("exec " + engine.shell() + "\n")
    assert run.calls[0][0] == ["qsub", "-terse", launcher.jobs[0].script]
    assert launcher.jobs[0].id == "55" and launcher.jobs[0].output == f"{cdir.log}/sge-55.*.out"


def test_parse_qstat_combines_array_tasks() -> None:
    table = """job-ID  prior   name       user   state submit/start at     queue  slots ja-task-ID
-----------------------------------------------------------------------------------
     55 0.55500 ipengine-l root   r     12/04/2026 19:20:01 all.q@h 1 1
     55 0.00000 ipengine-l root   qw    12/04/2026 19:20:00         1 2-3:1
     56 0.00000 ipengine-l root   qw    12/04/2026 19:20:00         1
     57 0.00000 ipengine-l root   Eqw   12/04/2026 19:20:00         1
     58 0.00000 ipengine-l root   dr    12/04/2026 19:20:00         1
     99 0.00000 other      bob    r     12/04/2026 19:20:00         1
"""
    known = parse_qstat(table, ["55", "56", "57", "58", "60"])
    assert {k: v[0] for k, v in known.items()} == {
        "55": RUNNING, "56": PENDING, "57": FAILED, "58": CANCELLED}


def test_pbs_job(cdir: ClusterDir, engine: EngineCommand) -> None:
    run = FakeScheduler({"qsub": "8.server\n",
                         "qstat": "Job ID  Name  User  Time Use S Queue\n"
                                  "------ ----- ---- -------- - -----\n"
                                  "8.server  ipengine-lab  me  0  R batch\n"})
    launcher = PBSLauncher(cdir, engine, BatchOptions(queue="batch", time="30",
                                                      engines_per_job=2), run)
    launcher.start(3)
    assert [j.id for j in launcher.jobs] == ["8.server", "8.server"]
    script = Path(launcher.jobs[0].script).read_text().splitlines()
    for line in ["#PBS -l nodes=1:ppn=2", "#PBS -q batch", "#PBS -l walltime=0:30:00",
                 "#PBS -N ipengine-lab", f"#PBS -o {cdir.log}/", "#PBS -j oe", "#PBS -V"]:
        assert line in script
    assert script[-1] == engine.shell("--fork", "2")
    assert launcher.jobs[0].output == f"{cdir.log}/ipengine-lab.o8"
    assert launcher.failure() is None
    assert launcher.jobs[0].state == RUNNING
    assert launcher.cancel_argv(["8.server"]) == ["qdel", "8.server"]


def test_lsf_job(cdir: ClusterDir, engine: EngineCommand) -> None:
    run = FakeScheduler({"bsub": "Job <314> is submitted to queue <normal>.\n",
                         "bjobs": "JOBID USER STAT QUEUE FROM_HOST EXEC_HOST JOB_NAME\n"
                                  "314 me EXIT normal h1 h2 ipengine-lab\n"})
    launcher = LSFLauncher(cdir, engine, BatchOptions(queue="normal", time="1:30:10"), run)
    launcher.start(4)
    argv, stdin = run.calls[0]
    assert argv == ["bsub"]  # the script goes on stdin, so bsub reads its #BSUB lines
    assert stdin == Path(launcher.jobs[0].script).read_text()
    for line in ["#BSUB -n 4", '#BSUB -R "span[hosts=1]"', "#BSUB -q normal", "#BSUB -W 1:31",
                 f"#BSUB -o {cdir.log}/lsf-%J.out", "#BSUB -J ipengine-lab"]:
        assert line in stdin.splitlines()
    assert launcher.jobs[0].id == "314"
    message = launcher.failure()
    assert message is not None and "lsf job 314 is FAILED" in message
    assert f"{cdir.log}/lsf-314.out" in message
    assert launcher.cancel_argv(["314"]) == ["bkill", "314"]


def test_unknown_engines_kind(cdir: ClusterDir, engine: EngineCommand) -> None:
    with pytest.raises(LaunchError, match="choose one of local, mpiexec, ssh, slurm"):
        cluster.make_launcher("condor", cdir, engine, {}, {})


def test_job_states_are_normalised() -> None:
    assert {DONE, FAILED, CANCELLED} == set(cluster.batch.FINISHED)


def test_parse_qacct() -> None:
    ok = "jobnumber    5\ntaskid       1\nfailed       0\nexit_status  0\n"
    assert parse_qacct(ok + ok) == (DONE, "")
    bad = "jobnumber    5\ntaskid       2\nfailed       0\nexit_status  127\n"
    assert parse_qacct(ok + bad) == (FAILED, "exit status 127")
    lost = "failed       100 : assumedly after job\nexit_status  137\n"
    assert parse_qacct(lost) == (FAILED, "exit status 137, 100 : assumedly after job")


# -- a controller on another host -------------------------------------------------

def test_remote_controller_commands() -> None:
    from ipython1.cluster import remote

    assert remote.host_name("alice@ctl") == "ctl"
    assert remote.host_name("[fd77::10]") == "fd77::10"
    start = remote.start_command(["/py", "-m", "ipython1.scripts.ipcontroller", "--ip", "::"],
                                 "lab")
    # Old FURL files go first, so a stale one is never fetched.
    assert start.startswith('rm -f "${IPYTHON1_DIR:-$HOME/.ipython1}/cluster_lab"/security/'
                            'ipcontroller-engine.furl ')
    assert start.endswith("; exec /py -m ipython1.scripts.ipcontroller --ip :: </dev/null")
    assert remote.fetch_command("lab").count('cluster_lab"/security/ipcontroller-') == 4
    assert remote.parse_furls("pb://a@x/e\npb://a@x/m\npb://a@x/t\n") is None
    assert remote.parse_furls("pb://a@x/e\npb://a@x/m\npb://a@x/t\npb://a@x/a\n") == {
        "ipcontroller-engine.furl": "pb://a@x/e", "ipcontroller-mec.furl": "pb://a@x/m",
        "ipcontroller-task.furl": "pb://a@x/t", "ipcontroller-admin.furl": "pb://a@x/a"}


def test_remote_stop_reads_both_pid_file_formats(tmp_path: Path) -> None:
    from ipython1.cluster.ssh import PIDS_OF_FILE
    from ipython1.common.processes import write_pid_file

    new, old = tmp_path / "new.pid", tmp_path / "old.pid"
    write_pid_file(new, [os.getpid(), os.getppid()])
    old.write_text(f"{os.getpid()}\n")

    def pids(path: Path) -> list[int]:
        out = subprocess.run(["sh", "-c", f"f={path}; {PIDS_OF_FILE}"], capture_output=True,
                             text=True, check=True).stdout
        return sorted(map(int, out.split()))

    assert pids(new) == sorted([os.getpid(), os.getppid()])
    assert pids(old) == [os.getpid()]

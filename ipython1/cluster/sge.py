"""Grid Engine (SGE, Son of Grid Engine): engines as one array job per qsub, one engine a task."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ipython1.cluster.batch import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    BatchLauncher,
    Job,
)
from ipython1.cluster.launcher import LaunchError


def sge_state(code: str) -> str:
    """Map a qstat state code (r, qw, hqw, Eqw, dr, t, s...) to a job state."""
    if "E" in code:
        return FAILED
    if "d" in code:
        return CANCELLED
    if any(c in code for c in "rtR"):
        return RUNNING
    return PENDING


class SGELauncher(BatchLauncher):
    """Engines through qsub/qdel of Grid Engine: an array job of n tasks."""

    name = "sge"
    directive = "#$"
    default_template = "#!/bin/sh\n${directives}\nexec ${engine_command}\n"
    output_pattern = "{log}/sge-{id}.{task}.out"
    id_placeholder = "$JOB_ID"
    task_placeholder = "$TASK_ID"

    def directive_lines(self, n: int, index: int) -> list[str]:
        o = self.options
        lines = ["-S /bin/sh", f"-N {self.job_name}", "-V", "-j y",
                 f"-o {self.output_path()}", f"-t 1-{n}"]
        if o.queue:
            lines.append(f"-q {o.queue}")
        if self.time_seconds is not None:
            lines.append(f"-l h_rt={self.time_seconds}")
        return lines + o.extra_args

    def submit_argv(self, script: Path) -> tuple[list[str], str | None]:
        return ["qsub", "-terse", str(script)], None

    def parse_job_id(self, stdout: str) -> str:
        # "123" for a job, "123.1-4:1" for an array job.
        job_id = stdout.strip().split(".")[0]
        if not job_id.isdigit():
            raise LaunchError(f"qsub printed no job id: {stdout.strip()!r}")
        return job_id

    def query(self, jobs: Sequence[Job]) -> dict[str, tuple[str, str]]:
        proc = self.run(["qstat"])
        if proc.returncode != 0:
            raise LaunchError(f"qstat failed: {(proc.stderr or proc.stdout).strip()}")
        known = parse_qstat(proc.stdout, [job.id for job in jobs])
        for job in jobs:
            if job.id not in known:  # finished: accounting tells how (when it is kept)
                finished = self.run(["qacct", "-j", job.id])
                if finished.returncode == 0:
                    known[job.id] = parse_qacct(finished.stdout)
        return known

    def cancel_argv(self, ids: Sequence[str]) -> list[str]:
        return ["qdel", *ids]


def parse_qstat(text: str, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Return {id: (state, reason)} from SGE's qstat table; an array job's tasks combine."""
    seen: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] in ids:
            seen.setdefault(fields[0], []).append(sge_state(fields[4]))
    known = {}
    for job_id, states in seen.items():
        for state in (FAILED, CANCELLED, RUNNING, PENDING):
            if state in states:
                known[job_id] = (state, "qstat shows an error state (Eqw): qstat -j "
                                 + job_id if state == FAILED else "")
                break
    return known


def parse_qacct(text: str) -> tuple[str, str]:
    """Return (state, reason) of a finished job from `qacct -j`; any failed task fails it."""
    failed = [line.split(None, 1)[1].strip() for line in text.splitlines()
              if line.startswith("failed") and len(line.split()) > 1 and line.split()[1] != "0"]
    codes = [line.split()[1] for line in text.splitlines()
             if line.startswith("exit_status") and len(line.split()) > 1]
    bad = [code for code in codes if code != "0"]
    if failed or bad:
        return FAILED, ", ".join([f"exit status {bad[0]}"] * bool(bad) + failed[:1])
    return DONE, ""

"""Batch-system launchers: engines as jobs of a scheduler (Slurm, SGE, PBS, LSF).

A batch launcher renders a job script from a template, submits it (several
jobs of ``engines_per_job`` engines when asked), asks the scheduler for each
job's state, and cancels them. The scheduler's commands run through an
injectable ``run`` callable, so rendering, submission arguments and parsing
are tested without a scheduler. Each system is a subclass that says how its
directives look and how its commands talk.

Templates use ``string.Template`` placeholders (``${name}``); shell variables
such as ``$SLURM_JOB_ID`` pass through untouched. The placeholders are:

``${n}``               engines in this job
``${engine_command}``  the command line that starts one engine
``${fork_command}``    the command line that starts ``n`` engines from one process
``${directives}``      the scheduler directives built from the options (queue, time, ...)
``${job_name}``, ``${output}``, ``${profile}``, ``${cluster_dir}``, ``${queue}``, ``${time}``
"""

from __future__ import annotations

import glob
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zope.interface import implementer

from ipython1.cluster.launcher import (
    EngineCommand,
    ILauncher,
    LaunchError,
    Runner,
    run_command,
    tail,
)
from ipython1.common.clusterdir import ClusterDir

# Normalised job states; each system maps its own codes onto these.
PENDING, RUNNING, DONE, FAILED, CANCELLED = "PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED"
FINISHED = (DONE, FAILED, CANCELLED)

JOBS_DIR = "jobs"


def parse_duration(text: str) -> int:
    """Return seconds from a wall time: MINUTES, H:MM:SS, MM:SS or D-H[:MM[:SS]]."""
    text = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m or not text:
        raise ValueError(f"invalid time {text!r}: use minutes (90) or H:MM:SS (1:30:00)")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        return ((int(days) * 24 + int(a)) * 60 + int(b or 0)) * 60 + int(c or 0)
    if c is not None:
        return (int(a) * 60 + int(b)) * 60 + int(c)
    if b is not None:
        return int(a) * 60 + int(b)
    return int(a) * 60


def format_hms(seconds: int) -> str:
    """Return H:MM:SS."""
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class BatchOptions:
    """What a user asks of the scheduler; each system renders the part it knows."""

    queue: str | None = None
    time: str | None = None
    template: str | None = None
    engines_per_job: int | None = None
    extra_args: list[str] = field(default_factory=list)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    srun_args: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchOptions:
        return cls(**data)


@dataclass
class Job:
    """One submitted job: its id, engines, script and output file (a glob for arrays)."""

    id: str
    engines: int
    script: str
    output: str
    state: str = PENDING
    reason: str = ""

    def output_files(self) -> list[str]:
        return sorted(glob.glob(self.output)) if any(c in self.output for c in "*?[") \
            else [self.output]

    def output_tail(self, lines: int = 15) -> str:
        texts = [f"--- {path}\n{tail(path, lines)}" for path in self.output_files()[:2]]
        return "\n".join(texts) if texts else f"(no output file yet: {self.output})"


def split_jobs(n: int, per_job: int | None) -> list[int]:
    """Return the engine count of each job: n in jobs of per_job (the last may be smaller)."""
    if n < 1:
        raise LaunchError("-n must be at least 1")
    if per_job is None or per_job >= n:
        return [n]
    if per_job < 1:
        raise LaunchError("--engines-per-job must be at least 1")
    return [per_job] * (n // per_job) + ([n % per_job] if n % per_job else [])


@implementer(ILauncher)
class BatchLauncher:
    """Engines as batch jobs; subclasses say how their scheduler is driven."""

    name = "batch"
    directive = "#"  # e.g. "#SBATCH"
    default_template = "#!/bin/sh\n${directives}\n${engine_command}\n"
    output_pattern = "{log}/batch-{id}.out"  # {log}, {id}, {task}, {name}
    id_placeholder = "%j"  # what the scheduler expands to the job id in an output path
    task_placeholder = ""  # the same for an array task ("" when not an array)

    def __init__(self, cluster_dir: ClusterDir, engine: EngineCommand,
                 options: BatchOptions | None = None, run: Runner = run_command,
                 jobs: Sequence[Job] = ()) -> None:
        self.cluster_dir = cluster_dir
        self.engine = engine
        self.options = options or BatchOptions()
        self.run = run
        self.jobs = list(jobs)
        if self.options.time is not None:
            self.time_seconds: int | None = parse_duration(self.options.time)
        else:
            self.time_seconds = None

    # -- what a subclass provides -------------------------------------------------

    def directive_lines(self, n: int, index: int) -> list[str]:
        """Return the directives (without the prefix) for a job of n engines."""
        raise NotImplementedError

    def submit_argv(self, script: Path) -> tuple[list[str], str | None]:
        """Return the submission command and what it reads on stdin (or None)."""
        raise NotImplementedError

    def parse_job_id(self, stdout: str) -> str:
        raise NotImplementedError

    def query(self, jobs: Sequence[Job]) -> dict[str, tuple[str, str]]:
        """Return {job id: (state, reason)} for the jobs the scheduler still knows."""
        raise NotImplementedError

    def cancel_argv(self, ids: Sequence[str]) -> list[str]:
        raise NotImplementedError

    # -- rendering ----------------------------------------------------------------

    @property
    def job_name(self) -> str:
        return f"ipengine-{self.engine.profile}"

    def template_text(self) -> str:
        if self.options.template is None:
            return self.default_template
        try:
            text = Path(self.options.template).read_text()
        except OSError as e:
            raise LaunchError(f"cannot read --template {self.options.template}: "
                              f"{e.strerror or e}") from None
        if "${engine_command}" not in text and "${fork_command}" not in text \
                and "$engine_command" not in text and "$fork_command" not in text:
            raise LaunchError(f"--template {self.options.template} never starts an engine: "
                              "it must use ${engine_command} or ${fork_command}")
        return text

    def output_path(self, job_id: str | None = None) -> str:
        """Return the output path: for the script (no job_id), or one job's (a glob for arrays)."""
        return self.output_pattern.format(
            log=self.cluster_dir.log, name=self.job_name,
            id=self.id_placeholder if job_id is None else job_id.split(".")[0],
            task=self.task_placeholder if job_id is None else "*")

    def render(self, n: int, index: int = 0) -> str:
        """Return the job script for a job of n engines (the index-th of this start)."""
        values = self.values(n)
        values["directives"] = "\n".join(f"{self.directive} {line}" for line in
                                         self.directive_lines(n, index))
        return string.Template(self.template_text()).safe_substitute(values)

    def values(self, n: int) -> dict[str, str]:
        """Return the template's placeholders for a job of n engines (but its directives)."""
        return {
            "n": str(n),
            "engine_command": self.engine.shell(),
            "fork_command": self.engine.shell("--fork", str(n)),
            "job_name": self.job_name,
            "output": self.output_path(),
            "profile": self.engine.profile,
            "cluster_dir": str(self.cluster_dir.path),
            "queue": self.options.queue or "",
            "time": format_hms(self.time_seconds) if self.time_seconds is not None else "",
        }

    def script_path(self, index: int) -> Path:
        return self.cluster_dir.path / JOBS_DIR / f"{self.name}-engines-{index}.sh"

    # -- ILauncher ----------------------------------------------------------------

    def start(self, n: int) -> None:
        """Render and submit the jobs; the scripts stay in the cluster directory."""
        counts = split_jobs(n, self.options.engines_per_job)
        (self.cluster_dir.path / JOBS_DIR).mkdir(parents=True, exist_ok=True)
        for index, count in enumerate(counts):
            script = self.script_path(index)
            script.write_text(self.render(count, index))
            script.chmod(0o700)
            argv, stdin = self.submit_argv(script)
            try:
                proc = self.run(argv, input=stdin)
            except FileNotFoundError:
                raise LaunchError(f"{argv[0]} not found: is {self.name} installed "
                                  "and on PATH here?") from None
            if proc.returncode != 0:
                raise LaunchError(f"{' '.join(argv)} failed (status {proc.returncode}): "
                                  f"{(proc.stderr or proc.stdout).strip()}")
            job_id = self.parse_job_id(proc.stdout)
            self.jobs.append(Job(job_id, count, str(script), self.output_path(job_id)))

    def refresh(self) -> None:
        """Ask the scheduler for every job's state; a job it forgot has finished."""
        if not self.jobs:
            return
        known = self.query(self.jobs)
        for job in self.jobs:
            if job.id in known:
                job.state, job.reason = known[job.id]
            elif job.state not in FINISHED:
                job.state, job.reason = DONE, "no longer known to the scheduler"

    def failure(self) -> str | None:
        self.refresh()
        for job in self.jobs:
            if job.state in FINISHED:
                why = f" ({job.reason})" if job.reason else ""
                return (f"{self.name} job {job.id} is {job.state}{why} before its engines "
                        f"registered; its output {job.output}:\n{job.output_tail()}")
        return None

    def waiting(self) -> list[str]:
        return [f"{self.name} job {job.id} ({job.engines} engines) is {job.state}"
                + (f": {job.reason}" if job.reason else "")
                for job in self.jobs if job.state == PENDING]

    def status(self) -> list[str]:
        try:
            self.refresh()
        except Exception as e:  # the scheduler may be down; still show what we know
            return [f"{self.name}: cannot query the scheduler: {e}"]
        return [f"{self.name} job {job.id}: {job.state}, {job.engines} engine(s)"
                + (f" ({job.reason})" if job.reason else "") + f", output {job.output}"
                for job in self.jobs]

    def stop(self, grace: float) -> list[str]:
        try:
            self.refresh()
        except Exception:
            pass  # cancel them all, then
        ids = [job.id for job in self.jobs if job.state not in FINISHED]
        if not ids:
            return [f"{self.name}: no job left to cancel"] if self.jobs else []
        proc = self.run(self.cancel_argv(ids))
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            return [f"{self.name}: {' '.join(self.cancel_argv(ids))}: {detail}"]
        return [f"{self.name}: cancelled job(s) {', '.join(ids)}"]

    def state(self) -> dict[str, Any]:
        return {"engine": self.engine.to_json(), "options": self.options.to_json(),
                "jobs": [job.__dict__ for job in self.jobs]}

    @classmethod
    def from_state(cls, cluster_dir: ClusterDir, data: dict[str, Any],
                   run: Runner = run_command) -> BatchLauncher:
        return cls(cluster_dir, EngineCommand.from_json(data["engine"]),
                   BatchOptions.from_json(data["options"]), run,
                   [Job(**job) for job in data["jobs"]])

"""Slurm: engines as sbatch jobs (from a login node) or as an srun step (inside an allocation).

From a login node each job runs ``srun`` over its tasks, one engine per task;
``--engines-per-job K`` splits the engines into several jobs that join as
they start. Inside an allocation (``SLURM_JOB_ID`` set, e.g. under ``salloc``
or in a batch script) nothing is submitted: one ``srun`` step starts the
engines on the allocation's nodes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zope.interface import implementer

from ipython1.cluster.batch import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    BatchLauncher,
    Job,
)
from ipython1.cluster.launcher import EngineCommand, ILauncher, LaunchError, Runner, run_command
from ipython1.cluster.process import ProcessLauncher
from ipython1.common.clusterdir import ClusterDir

# scontrol's JobState values, by what they mean for engines.
_STATES = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "RESIZING": PENDING,
    "SUSPENDED": PENDING, "REQUEUE_HOLD": PENDING, "REQUEUE_FED": PENDING,
    "RUNNING": RUNNING, "COMPLETING": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING,
    "COMPLETED": DONE,
    "CANCELLED": CANCELLED, "PREEMPTED": CANCELLED, "REVOKED": CANCELLED,
    "FAILED": FAILED, "TIMEOUT": FAILED, "NODE_FAIL": FAILED, "BOOT_FAIL": FAILED,
    "DEADLINE": FAILED, "OUT_OF_MEMORY": FAILED, "SPECIAL_EXIT": FAILED,
}


def in_allocation(environ: Mapping[str, str]) -> bool:
    """Tell whether this process runs inside a Slurm allocation (salloc, sbatch)."""
    return bool(environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"))


def parse_scontrol(text: str) -> dict[str, str]:
    """Return the Key=Value fields of one `scontrol -o show job` line."""
    fields: dict[str, str] = {}
    # Values may hold spaces only in the last fields (Command=, WorkDir=...); we read few.
    for match in re.finditer(r"(\w[\w:/]*)=(\S*)", text):
        fields.setdefault(match.group(1), match.group(2))
    return fields


class SlurmLauncher(BatchLauncher):
    """Engines through sbatch: each job srun's its engines, one per task."""

    name = "slurm"
    directive = "#SBATCH"
    default_template = "#!/bin/sh\n${directives}\nsrun ${srun_args}${engine_command}\n"
    output_pattern = "{log}/slurm-{id}.out"

    def values(self, n: int) -> dict[str, str]:
        args = shlex.join(self.options.srun_args)
        return {**super().values(n), "srun_args": args + " " if args else ""}

    def directive_lines(self, n: int, index: int) -> list[str]:
        o = self.options
        lines = [f"--job-name={self.job_name}", f"--ntasks={n}",
                 f"--output={self.output_path()}"]
        if o.partition:
            lines.append(f"--partition={o.partition}")
        if o.account:
            lines.append(f"--account={o.account}")
        if o.qos:
            lines.append(f"--qos={o.qos}")
        if o.queue and not o.partition:  # --queue means the partition here
            lines.append(f"--partition={o.queue}")
        if self.time_seconds is not None:
            lines.append(f"--time={self.time_seconds // 60 + (self.time_seconds % 60 > 0)}")
        lines += o.extra_args
        return lines

    def submit_argv(self, script: Path) -> tuple[list[str], str | None]:
        return ["sbatch", "--parsable", str(script)], None

    def parse_job_id(self, stdout: str) -> str:
        job_id = stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise LaunchError(f"sbatch printed no job id: {stdout.strip()!r}")
        return job_id

    def query(self, jobs: Sequence[Job]) -> dict[str, tuple[str, str]]:
        known: dict[str, tuple[str, str]] = {}
        for job in jobs:
            proc = self.run(["scontrol", "-o", "show", "job", job.id])
            if proc.returncode != 0:
                continue  # "Invalid job id": finished long enough ago to be forgotten
            fields = parse_scontrol(proc.stdout)
            raw = fields.get("JobState", "")
            reason = fields.get("Reason", "")
            exit_code = fields.get("ExitCode", "")
            if exit_code and exit_code != "0:0" and raw not in ("PENDING", "RUNNING"):
                reason = f"exit code {exit_code}" + (f", {reason}" if reason != "None" else "")
            known[job.id] = (_STATES.get(raw, raw or PENDING),
                             "" if reason in ("None", "") else reason)
            if fields.get("StdOut"):
                job.output = fields["StdOut"]
        return known

    def cancel_argv(self, ids: Sequence[str]) -> list[str]:
        return ["scancel", *ids]


@implementer(ILauncher)
class SlurmStepLauncher(ProcessLauncher):
    """Inside an allocation: one srun step of n engines over the allocation's nodes."""

    name = "slurm-step"

    def __init__(self, cluster_dir: ClusterDir, engine: EngineCommand,
                 srun_args: Sequence[str] = (), allocation: str = "",
                 pids: Sequence[dict[str, Any]] = (), run: Runner = run_command) -> None:
        super().__init__(cluster_dir, pids)
        self.engine = engine
        self.srun_args = list(srun_args)
        self.allocation = allocation

    def srun_argv(self, n: int) -> list[str]:
        # Engines wait on the controller, never on each other: a dead one must not end the step.
        return ["srun", f"--ntasks={n}", "--kill-on-bad-exit=0", *self.srun_args,
                *self.engine.argv()]

    def start(self, n: int) -> None:
        self.spawn(self.srun_argv(n), f"srun step in allocation {self.allocation}",
                   self.cluster_dir.log_file("srun-engines"))

    def state(self) -> dict[str, Any]:
        return {**super().state(), "engine": self.engine.to_json(),
                "srun_args": self.srun_args, "allocation": self.allocation}

    @classmethod
    def from_state(cls, cluster_dir: ClusterDir, data: dict[str, Any],
                   run: Runner = run_command) -> SlurmStepLauncher:
        return cls(cluster_dir, EngineCommand.from_json(data["engine"]), data["srun_args"],
                   data["allocation"], data["pids"], run)


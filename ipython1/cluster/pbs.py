"""PBS (Torque, PBS Pro, OpenPBS): engines as qsub jobs, n engines forked on one node a job.

No PBS server can be installed on the machines this is tested on; the tests
check the rendered script and the commands issued, through stand-in
qsub/qstat/qdel executables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ipython1.cluster.batch import DONE, PENDING, RUNNING, BatchLauncher, Job, format_hms
from ipython1.cluster.launcher import LaunchError

_STATES = {"Q": PENDING, "H": PENDING, "W": PENDING, "T": PENDING, "S": PENDING,
           "R": RUNNING, "E": RUNNING, "B": RUNNING, "C": DONE, "F": DONE, "X": DONE}


class PBSLauncher(BatchLauncher):
    """Engines through qsub/qdel of PBS: each job starts n engines on one node."""

    name = "pbs"
    directive = "#PBS"
    default_template = "#!/bin/sh\n${directives}\n${fork_command}\n"
    # Given a directory, PBS names the file <job name>.o<sequence number>.
    output_pattern = "{log}/{name}.o{id}"

    def output_path(self, job_id: str | None = None) -> str:
        if job_id is None:
            return f"{self.cluster_dir.log}/"
        return super().output_path(job_id)

    def directive_lines(self, n: int, index: int) -> list[str]:
        o = self.options
        lines = [f"-N {self.job_name}", "-V", "-j oe", f"-o {self.output_path()}",
                 f"-l nodes=1:ppn={n}"]
        if o.queue:
            lines.append(f"-q {o.queue}")
        if self.time_seconds is not None:
            lines.append(f"-l walltime={format_hms(self.time_seconds)}")
        return lines + o.extra_args

    def submit_argv(self, script: Path) -> tuple[list[str], str | None]:
        return ["qsub", str(script)], None

    def parse_job_id(self, stdout: str) -> str:
        job_id = stdout.strip()
        if not job_id or not job_id.split(".")[0].isdigit():
            raise LaunchError(f"qsub printed no job id: {job_id!r}")
        return job_id

    def query(self, jobs: Sequence[Job]) -> dict[str, tuple[str, str]]:
        # qstat fails for ids the server forgot, and still lists the others.
        proc = self.run(["qstat", *(job.id for job in jobs)])
        known = {}
        for line in proc.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 6:
                for job in jobs:
                    if fields[0] == job.id or job.id.startswith(fields[0].rstrip("*")):
                        known[job.id] = (_STATES.get(fields[-2], PENDING), "")
        return known

    def cancel_argv(self, ids: Sequence[str]) -> list[str]:
        return ["qdel", *ids]

"""LSF: engines as bsub jobs, n engines forked on one host a job.

No LSF can be installed on the machines this is tested on; the tests check
the rendered script and the commands issued, through stand-in
bsub/bjobs/bkill executables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ipython1.cluster.batch import DONE, FAILED, PENDING, RUNNING, BatchLauncher, Job
from ipython1.cluster.launcher import LaunchError

_STATES = {"PEND": PENDING, "PSUSP": PENDING, "WAIT": PENDING, "PROV": PENDING,
           "RUN": RUNNING, "USUSP": RUNNING, "SSUSP": RUNNING,
           "DONE": DONE, "EXIT": FAILED, "ZOMBI": FAILED, "UNKWN": FAILED}


class LSFLauncher(BatchLauncher):
    """Engines through bsub/bkill of LSF: each job starts n engines on one host."""

    name = "lsf"
    directive = "#BSUB"
    default_template = "#!/bin/sh\n${directives}\n${fork_command}\n"
    output_pattern = "{log}/lsf-{id}.out"
    id_placeholder = "%J"

    def directive_lines(self, n: int, index: int) -> list[str]:
        o = self.options
        lines = [f"-J {self.job_name}", f"-o {self.output_path()}", f"-n {n}",
                 '-R "span[hosts=1]"']
        if o.queue:
            lines.append(f"-q {o.queue}")
        if self.time_seconds is not None:  # LSF's -W is [hours:]minutes
            minutes = -(-self.time_seconds // 60)
            lines.append(f"-W {minutes // 60}:{minutes % 60:02d}")
        return lines + o.extra_args

    def submit_argv(self, script: Path) -> tuple[list[str], str | None]:
        # bsub reads #BSUB lines only from a script on its stdin.
        return ["bsub"], script.read_text()

    def parse_job_id(self, stdout: str) -> str:
        m = re.search(r"Job <(\d+)>", stdout)
        if not m:
            raise LaunchError(f"bsub printed no job id: {stdout.strip()!r}")
        return m.group(1)

    def query(self, jobs: Sequence[Job]) -> dict[str, tuple[str, str]]:
        proc = self.run(["bjobs", *(job.id for job in jobs)])
        ids = {job.id for job in jobs}
        known = {}
        for line in proc.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] in ids:
                known[fields[0]] = (_STATES.get(fields[2], PENDING), "")
        return known

    def cancel_argv(self, ids: Sequence[str]) -> list[str]:
        return ["bkill", *ids]

"""Stand-ins for PBS (qsub, qstat, qdel) and LSF (bsub, bjobs, bkill): no server can be
installed here. Each records its argv (and a script read on stdin) in $FAKE_BATCH_DIR/calls
and runs a submitted script at once, in the background, as a one-node scheduler would.

Installed by the tests as small scripts named after each command that run
``python fakebatch.py COMMAND ARGS...``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_BATCH_DIR"])


def record(argv: list[str], stdin: str | None = None) -> None:
    with open(STATE / "calls", "a") as f:
        f.write(json.dumps({"argv": argv, "stdin": stdin}) + "\n")


def new_id() -> int:
    seq = STATE / "seq"
    n = int(seq.read_text()) + 1 if seq.exists() else 1
    seq.write_text(str(n))
    return n


def run_job(n: int, script: Path, output: Path, env: dict[str, str]) -> None:
    with open(output, "ab") as out:
        proc = subprocess.Popen(["sh", str(script)], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=dict(os.environ, **env))
    (STATE / f"job-{n}.pid").write_text(str(proc.pid))


def alive(n: str) -> bool | None:
    path = STATE / f"job-{n}.pid"
    if not path.exists():
        return None
    try:
        os.kill(int(path.read_text()), 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{path.read_text()}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def kill(n: str) -> bool:
    path = STATE / f"job-{n}.pid"
    if not path.exists():
        return False
    try:
        os.killpg(int(path.read_text()), signal.SIGTERM)
    except ProcessLookupError:
        pass
    return True


def directive(text: str, prefix: str, flag: str) -> str | None:
    m = re.search(rf"^{re.escape(prefix)} {flag} (.+)$", text, re.M)
    return m.group(1).strip() if m else None


def main() -> int:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "bsub":
        text = sys.stdin.read()
        record([command, *args], text)
        n = new_id()
        script = STATE / f"job-{n}.sh"
        script.write_text(text)
        output = (directive(text, "#BSUB", "-o") or f"{STATE}/lsf-%J.out").replace("%J", str(n))
        run_job(n, script, Path(output), {"LSB_JOBID": str(n)})
        print(f"Job <{n}> is submitted to queue <{directive(text, '#BSUB', '-q') or 'normal'}>.")
        return 0
    record([command, *args])
    if command == "qsub":
        n = new_id()
        text = Path(args[-1]).read_text()
        name = directive(text, "#PBS", "-N") or "STDIN"
        run_job(n, Path(args[-1]), Path(directive(text, "#PBS", "-o") or STATE) / f"{name}.o{n}",
                {"PBS_JOBID": f"{n}.fake"})
        print(f"{n}.fake")
        return 0
    if command == "qstat":
        print("Job ID          Name             User            Time Use S Queue")
        print("--------------- ---------------- --------------- -------- - -----")
        status = 0
        for job in args:
            state = alive(job.split(".")[0])
            if state is None:
                print(f"qstat: Unknown Job Id {job}", file=sys.stderr)
                status = 153
            else:
                print(f"{job:<15} ipengine         root            0 {'R' if state else 'C'} batch")
        return status
    if command == "bjobs":
        print("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME")
        for job in args:
            state = alive(job)
            if state is None:
                print(f"Job <{job}> is not found", file=sys.stderr)
            else:
                print(f"{job:<7} root    {'RUN' if state else 'DONE':<5} normal     vm  vm  "
                      "ipengine   Dec  4 19:20")
        return 0
    if command in ("qdel", "bkill"):
        status = 0
        for job in args:
            if not kill(job.split(".")[0]):
                print(f"{command}: unknown job {job}", file=sys.stderr)
                status = 1
            elif command == "bkill":
                print(f"Job <{job}> is being terminated")
        return status
    print(f"fakebatch: unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

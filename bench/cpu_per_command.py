"""CPU per command of one ipython1 tree: controller, engine and client, one engine.

    python bench/cpu_per_command.py [ROOT]      # ROOT: an ipython1 source tree (default: this one)

Starts ``ipcluster -n 1`` in a temporary IPYTHON1_DIR, runs 3,000
``execute("pass")``, 2,000 one-element ``map``s and 2,000 ``StringTask("pass")``
(run and fetched), and prints one JSON document: per command, the wall time
its median and minimum, and the CPU (user + system, from /proc) of each
process. CPU moves far less
than wall time on a shared machine, so before/after comparisons of small
changes read it (docs/performance.md, issue 13). ``IPYTHON1_COMMAND_CHANNEL=0``
measures the Foolscap path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))
TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="ipython1-cpu-")
    os.environ.update(IPYTHON1_DIR=tmp, IPYTHON1_NONINTERACTIVE="1", PYTHONPATH=str(ROOT))

    def ipcluster(*args: str) -> subprocess.CompletedProcess[str]:
        # cwd=ROOT: `python -m` puts the working directory first on the path.
        return subprocess.run([sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile",
                               "cpu", *args], env=dict(os.environ), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    started = ipcluster("start", "-n", "1", "--daemon")
    out: dict[str, Any] = {}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        from ipython1.client import blocking as client
        from ipython1.common.clusterdir import ClusterDir, read_pid
        from ipython1.scripts.ipcluster import engine_pids

        cluster = ClusterDir("cpu", root=Path(tmp))
        pids = [read_pid(cluster.pid_file("ipcontroller")), *engine_pids(cluster)]

        def used() -> list[float]:
            mine = os.times()
            return [_cpu(p) for p in pids] + [mine.user + mine.system]

        mec = client.MultiEngineClient(str(cluster.furl_file("ipcontroller-mec.furl")),
                                       timeout=60)
        tc = client.TaskClient(str(cluster.furl_file("ipcontroller-task.furl")), timeout=60)
        for _ in range(200):
            mec.execute("pass")
        task = client.StringTask("pass")
        for name, call, n in [
                ("execute", lambda: mec.execute("pass"), 3000),
                ("map", lambda: mec.map(abs, [1]), 2000),
                ("task", lambda: tc.get_task_result(tc.run(task), block=True), 2000)]:
            times = []
            before, start = used(), time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            wall, after = time.perf_counter() - start, used()
            ms = [(b - a) / n * 1e3 for a, b in zip(before, after, strict=True)]
            times.sort()
            out[name] = {"controller_ms": ms[0], "engine_ms": ms[1], "client_ms": ms[-1],
                         "cpu_ms": sum(ms), "wall_ms": wall / n * 1e3,
                         "p50_ms": times[n // 2] * 1e3, "min_ms": times[0] * 1e3,
                         "local": mec.local_channel}
    finally:
        ipcluster("stop")
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

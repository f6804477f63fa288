"""Where the CPU of starting N engines across hosts goes (issue 17); run as root.

    python bench/startup_cpu.py N OUT [ROOT]   # ROOT: an ipython1 source tree (default: this one)

Makes a grid (tests/hostgrid.py): the controller on ``ctl``, ``ipengine
--fork`` with N/2 engines on each of ``e1`` and ``e2``, a client on ``cli``
polling ``get_ids()`` as bench/run.py does. Writes OUT/startup.json: seconds
until all N registered and the registration timeline; CPU (user and system,
from /proc) of the controller and of all engines during start-up; page faults
per engine; CPU per second of the whole idle cluster over 10 s once all
registered (should be ~0); PSS per engine. The controller's and engines' logs
are copied to OUT/logs. Run it under ``flock /work/wt/bench.lock``.
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

ROOT = Path(sys.argv[3] if len(sys.argv) > 3 else Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
TICK = os.sysconf("SC_CLK_TCK")
IDLE_S = 10.0

WATCH_IDS = """
import sys, time
from ipython1.client.blocking import MultiEngineClient
furl, n, t0 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
mec = MultiEngineClient(furl)
last = -1
while last < n:
    k = len(mec.get_ids())
    if k != last:
        print(f"{time.time() - t0:.3f} {k}", flush=True)
        last = k
    time.sleep(0.05)
"""


def _stat(pids: list[int]) -> dict[str, float]:
    """Sum user and system CPU seconds and minor page faults of pids (/proc/PID/stat)."""
    total = {"user_s": 0.0, "sys_s": 0.0, "minflt": 0.0}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total["minflt"] += int(fields[7])
        total["user_s"] += int(fields[11]) / TICK
        total["sys_s"] += int(fields[12]) / TICK
    return total


def _minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 2) for k in after}


def _pss_mib(pids: list[int]) -> float:
    kib = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                kib += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except OSError:
            continue
    return round(kib / 1024 / max(1, len(pids)), 1)


def measure(n: int, out: Path) -> dict[str, Any]:
    from tests.hostgrid import HostGrid

    work = Path(tempfile.mkdtemp(prefix="ipython1-startup-"))
    env = dict(os.environ, IPYTHON1_DIR=str(work / "ipython1"), PYTHONPATH=str(ROOT))
    here: dict[str, Any] = {"env": env, "cwd": str(ROOT)}  # -m: the cwd before PYTHONPATH
    python = sys.executable
    result: dict[str, Any] = {"engines": n, "load_before": os.getloadavg()}
    try:
        with HostGrid(["ctl", "cli", "e1", "e2"]) as grid:
            ctl = grid["ctl"]
            ctl.popen([python, "-m", "ipython1.scripts.ipcontroller", "--profile", "bench",
                       "--ip", ctl.address], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, **here)
            furl = work / "ipython1" / "cluster_bench" / "security" / "ipcontroller-mec.furl"
            deadline = time.monotonic() + 60
            while not furl.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # the controller's own start-up CPU is not counted
            controller = ctl.pids()
            controller_before = _stat(controller)
            t0 = time.time()
            for host, k in (("e1", n - n // 2), ("e2", n // 2)):
                grid[host].popen([python, "-m", "ipython1.scripts.ipengine", "--profile",
                                  "bench", "--fork", str(k), "--connect-timeout", "600"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **here)
            watcher = grid["cli"].popen([python, "-c", WATCH_IDS, str(furl), str(n), str(t0)],
                                        stdout=subprocess.PIPE, text=True, **here)
            assert watcher.stdout is not None
            result["timeline"] = [[float(t), int(k)] for t, k in
                                  (line.split() for line in watcher.stdout)]
            watcher.wait()
            result["start_s"] = round(time.time() - t0, 2)
            engines = grid["e1"].pids() + grid["e2"].pids()
            result["load_after"] = os.getloadavg()
            result["controller"] = _minus(_stat(controller), controller_before)
            result["engines_total"] = {k: round(v, 2) for k, v in _stat(engines).items()}
            result["per_engine_ms"] = round(1000 * (result["engines_total"]["user_s"] +
                                                    result["engines_total"]["sys_s"]) / n, 1)
            result["faults_per_engine"] = round(result["engines_total"]["minflt"] / n)
            time.sleep(2.0)
            idle = _stat(controller + engines)
            time.sleep(IDLE_S)
            idle_cpu = _minus(_stat(controller + engines), idle)
            result["idle_cpu_per_s"] = round((idle_cpu["user_s"] + idle_cpu["sys_s"]) / IDLE_S, 4)
            result["pss_mib_per_engine"] = _pss_mib(engines)
        logs = work / "ipython1" / "cluster_bench" / "log"
        if logs.exists():
            shutil.copytree(logs, out / "logs", dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    result = measure(n, out)
    (out / "startup.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}))


if __name__ == "__main__":
    main()

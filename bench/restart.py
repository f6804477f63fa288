"""Restart and recovery timings (issue 15).

    flock /work/wt/bench.lock .venv/bin/python bench/restart.py [--engines 2,8] [--reps 5]

1. Rejoin: SIGKILL the controller of an N-engine cluster, run
   `ipcluster start -n N --daemon --reuse`, and time (a) the command and
   (b) from the new controller listening (its pid file) to the last engine
   rejoined (the transcript's engine_registered events).
2. Supervisor: under `--restart-engines`, SIGKILL an engine and time until
   its `engine_restarted` event; and `mec.restart(targets=1)`.
3. Journal: the task journal's cost per task, in process (Scheduler with and
   without a TaskJournal: submit in calls of 1000, replies in batches) and end
   to end (2000 no-op tasks, one `tc.run` each, and a `tc.map`, with
   IPYTHON1_TASK_JOURNAL=0 and 1).

Prints one JSON document; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import become_subreaper, stop_my_descendants  # noqa: E402


def ipcluster(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile",
                           "bench", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    return proc


def events(root: Path, kind: str, after: float) -> list[dict[str, Any]]:
    path = root / "cluster_bench" / "log" / "transcript.jsonl"
    out = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("kind") == kind and event.get("time", 0) >= after:
            out.append(event)
    return out


def wait(condition: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError("timed out")


def cluster_env(root: Path, journal: bool = True) -> dict[str, str]:
    return dict(os.environ, IPYTHON1_DIR=str(root), IPYTHON1_TASK_JOURNAL="1" if journal else "0",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def rejoin(n: int, reps: int) -> dict[str, Any]:
    from ipython1.common.clusterdir import ClusterDir, read_pid

    root = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    env = cluster_env(root)
    os.environ["IPYTHON1_DIR"] = str(root)
    ipcluster(env, "start", "-n", str(n), "--daemon")
    cdir = ClusterDir("bench", root=root)
    command, rejoined = [], []
    try:
        for _ in range(reps):
            os.kill(read_pid(cdir.pid_file("ipcontroller")), signal.SIGKILL)
            wait(lambda: not cdir.controller_running())
            t0 = time.time()
            ipcluster(env, "start", "-n", str(n), "--daemon", "--reuse")
            command.append(time.time() - t0)
            listening = cdir.pid_file("ipcontroller").stat().st_mtime
            registered = events(root, "engine_registered", t0)
            assert len(registered) >= n, registered
            rejoined.append(max(e["time"] for e in registered) - listening)
    finally:
        ipcluster(env, "stop")
    return {"engines": n, "reps": reps,
            "restart_command_s": statistics.median(command),
            "listening_to_all_rejoined_s": statistics.median(rejoined),
            "listening_to_all_rejoined_max_s": max(rejoined)}


def supervisor(reps: int) -> dict[str, Any]:
    from ipython1.client import blocking as client

    root = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    env = cluster_env(root)
    os.environ["IPYTHON1_DIR"] = str(root)
    ipcluster(env, "start", "-n", "2", "--daemon", "--restart-engines")
    back, requested = [], []
    mec = client.MultiEngineClient(profile="bench", timeout=60)
    try:
        for _ in range(reps):
            pid = mec.apply(os.getpid, targets=1)
            t0 = time.time()
            os.kill(pid, signal.SIGKILL)
            event = wait(lambda t0=t0: events(root, "engine_restarted", t0))[0]
            back.append(event["time"] - t0)
            t0 = time.monotonic()
            mec.restart(targets=1)
            requested.append(time.monotonic() - t0)
    finally:
        mec.close()
        ipcluster(env, "stop")
    return {"reps": reps, "sigkill_to_back_s": statistics.median(back),
            "sigkill_to_back_max_s": max(back),
            "mec_restart_s": statistics.median(requested)}


def journal_in_process(n: int = 20_000, batch: int = 64, reps: int = 3) -> dict[str, Any]:
    """Scheduler work per task without and with a journal (median of reps each):
    on the reactor's thread (encoding, TaskJournal.prepare) and on the writer's
    (SQLite and fsync, which TaskFarm runs on a thread of its own)."""
    from ipython1.controller import task as T
    from ipython1.controller.journal import FILE_NAME, TaskJournal

    def run(with_journal: bool) -> tuple[float, float, int]:
        tmp = Path(tempfile.mkdtemp(prefix="bench-journal-"))
        journal = TaskJournal(tmp / FILE_NAME) if with_journal else None
        s = T.Scheduler(time.time, journal=journal)
        s.add_engine(0)
        s.estimate = T.TARGET_BATCH_SECONDS / batch  # batches of `batch` tasks
        payload = [b"x" * 100]
        writes = 0.0

        def commit(durable: bool) -> None:
            nonlocal writes
            if journal is None:
                return
            write = journal.prepare(durable)
            if write is not None:
                t = time.perf_counter()
                write()
                writes += time.perf_counter() - t

        t0 = time.perf_counter()
        for _ in range(0, n, 1000):
            for _ in range(1000):
                s.submit(T.validate_spec({}, payload))
            commit(True)  # one per submit call, as TaskFarm.submit
        while True:
            batches = s.assign()
            if not batches:
                break
            for b in batches:
                s.batch_done(0, b.id, [[tid, "ok", s.estimate, [b"r" * 50]]
                                       for tid, _ in b.tasks])
            commit(False)  # one per reactor turn of replies
        elapsed = time.perf_counter() - t0
        return elapsed - writes, writes, journal.commits if journal else 0

    memory = statistics.median(run(False)[0] for _ in range(reps))
    journaled = [run(True) for _ in range(reps)]
    reactor = statistics.median(j[0] for j in journaled)
    writer = statistics.median(j[1] for j in journaled)
    return {"tasks": n, "tasks_per_batch": batch, "commits": journaled[0][2],
            "memory_us_per_task": memory / n * 1e6,
            "reactor_thread_cost_us_per_task": (reactor - memory) / n * 1e6,
            "writer_thread_us_per_task": writer / n * 1e6}


def journal_end_to_end(n: int = 2000) -> dict[str, Any]:
    from ipython1.client import blocking as client

    out: dict[str, Any] = {"tasks": n}
    for journal in (False, True):
        root = Path(tempfile.mkdtemp(prefix="bench-restart-"))
        env = cluster_env(root, journal)
        os.environ["IPYTHON1_DIR"] = str(root)
        ipcluster(env, "start", "-n", "2", "--daemon")
        tc = client.TaskClient(profile="bench", timeout=120)
        try:
            tc.barrier([tc.run(client.MapTask(abs, args=(-1,)))])  # warm up
            t0 = time.perf_counter()
            tids = [tc.run(client.MapTask(abs, args=(-i,))) for i in range(n)]
            tc.barrier(tids)
            run_each = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            tc.map(abs, range(-n * 10, 0))
            mapped = n * 10 / (time.perf_counter() - t0)
        finally:
            tc.close()
            ipcluster(env, "stop")
        key = "journal" if journal else "memory"
        out[f"{key}_run_each_tasks_per_s"] = run_each
        out[f"{key}_map_items_per_s"] = mapped
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", default="2,8")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    become_subreaper()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}
    try:
        results["rejoin"] = [rejoin(int(n), args.reps) for n in args.engines.split(",")]
        results["supervisor"] = supervisor(args.reps)
        results["journal_in_process"] = journal_in_process()
        results["journal_end_to_end"] = journal_end_to_end()
    finally:
        stop_my_descendants()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Workloads of issue 6 on dask.distributed, one phase per run; JSON on stdout.

Run inside bench/.venv-peers:  python peers_dask.py scale --engines 8
The cluster is ``dask scheduler`` plus ``dask worker --nworkers N --nthreads 1``
as child processes (each worker under a nanny, dask's default).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import distributed
import numpy as np
from common import (
    MIB,
    Results,
    Settings,
    become_subreaper,
    engine_memory_mib,
    install_term_handler,
    kill_later,
    log,
    parse_args,
    record_fault,
    run_phase,
    stop_tree,
    time_calls,
    wait_until,
)
from distributed import Client
from grid import GridHost, GridSpec

SYSTEM = "dask"


def noop(*args: Any) -> None:
    """Do nothing: the task of the latency and throughput workloads."""


def sleep_task(seconds: float, i: int) -> float:
    """Sleep: the task of the fault workload."""
    import time
    time.sleep(seconds)
    return seconds


def json_file_ready(path: Path) -> bool:
    """Tell whether path holds a complete JSON document."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


class Cluster:
    """A dask scheduler and N single-threaded workers as child processes."""

    def __init__(self, n: int, workdir: Path, grid: GridSpec | None = None) -> None:
        self.n = n
        self.workdir = workdir
        self.grid = grid  # cross-host: scheduler on ctl, workers on the engine hosts
        self.scheduler_file = workdir / f"scheduler_{n}.json"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.client: Client | None = None

    def _spawn(self, args: list[str], log_name: str,
               host: GridHost | None = None) -> subprocess.Popen[bytes]:
        dask = str(Path(sys.executable).with_name("dask"))
        argv = [dask, *args] if host is None else GridSpec.on(host, [dask, *args])
        with open(self.workdir / log_name, "wb") as logf:
            return subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    def start(self, timeout: float) -> float:
        """Start scheduler and workers; return seconds until all N workers registered."""
        t0 = time.monotonic()
        grid = self.grid
        self.scheduler = self._spawn(
            ["scheduler", "--host", grid.ctl.address if grid else "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(self.scheduler_file)],
            f"scheduler_{self.n}.log", grid.ctl if grid else None)
        # Memory limits off: the default splits RAM between workers, which at
        # N=256 would pause workers holding the 256 MiB arrays of W4.
        placement = grid.spread(self.n) if grid else [(None, self.n)]
        for host, k in placement:
            self.workers.append(self._spawn(
                ["worker", "--scheduler-file", str(self.scheduler_file), "--nworkers", str(k),
                 "--nthreads", "1", "--host", host.address if host else "127.0.0.1",
                 "--no-dashboard", "--memory-limit", "0"],
                f"workers_{self.n}_{host.name if host else 'local'}.log", host))
        scheduler = self.scheduler
        wait_until(lambda: scheduler.poll() is not None or json_file_ready(self.scheduler_file),
                   timeout, what="scheduler file")
        if scheduler.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {scheduler.returncode}")
        self.client = Client(scheduler_file=str(self.scheduler_file),
                             timeout=max(1.0, timeout - (time.monotonic() - t0)))
        self.client.wait_for_workers(self.n, timeout=max(1.0, timeout - (time.monotonic() - t0)))
        return time.monotonic() - t0

    def stop(self) -> None:
        """Stop workers, then the scheduler, whatever state they are in."""
        if self.client is not None:
            try:
                self.client.close(timeout=10)
            except Exception as exc:
                log(f"closing client: {exc}")
        for proc in (*self.workers, self.scheduler):
            if proc is not None:
                stop_tree(proc.pid, grace=15.0)
                proc.wait(5)

    def worker_addresses(self) -> list[str]:
        """Return the addresses of the workers, sorted."""
        assert self.client is not None
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])


def scale(results: Results, cluster: Cluster, settings: Settings) -> None:
    """Start-up time, memory per engine, W1 latency-all, and W2 when N == 1."""
    n = cluster.n
    try:
        results.add("START", "scheduler+workers", "startup_s",
                    round(cluster.start(settings.startup_timeout(n)), 3), n)
    except Exception as exc:
        results.error("START", "scheduler+workers", f"{type(exc).__name__}: {exc}"[:500], n)
        results.error("W1", "run", "cluster did not start", n)
        return
    client = cluster.client
    assert client is not None
    with results.guard("W1", "run", n):
        results.add_latencies("W1", "run", time_calls(
            lambda: client.run(lambda: None), settings.w1_reps, settings.w1_warmup), n)
    with results.guard("MEM", "worker+nanny", n):
        pids = list(client.run(os.getpid).values())
        assert cluster.scheduler is not None
        results.add("MEM", "worker+nanny", "pss_mib_per_engine",
                    round(engine_memory_mib(pids, {cluster.scheduler.pid}), 1), n)
    if n == 1:
        addr = cluster.worker_addresses()[0]
        with results.guard("W2", "run"):
            results.add_latencies("W2", "run", time_calls(
                lambda: client.run(noop, workers=[addr]), settings.w2_reps, 5),
                which=("p50", "min"))
        with results.guard("W2", "submit"):
            results.add_latencies("W2", "submit", time_calls(
                lambda: client.submit(noop, pure=False).result(), settings.w2_reps, 5),
                which=("p50", "min"))


def throughput(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W3: no-op tasks through the scheduler, tasks/s."""
    cluster.start(settings.startup_timeout(cluster.n))
    client = cluster.client
    assert client is not None
    count = settings.w3_tasks
    client.gather(client.map(noop, range(20), pure=False))
    with results.guard("W3", "map"):
        t0 = time.perf_counter()
        out = client.gather(client.map(noop, range(count), pure=False))
        elapsed = time.perf_counter() - t0
        assert len(out) == count
        results.add("W3", "map", "tasks_per_s", round(count / elapsed, 1))
    with results.guard("W3", "submit_per_task"):
        t0 = time.perf_counter()
        futures = [client.submit(noop, i, pure=False) for i in range(count)]
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - t0
        results.add("W3", "submit_per_task", "tasks_per_s", round(count / elapsed, 1))


def push_pull(client: Client, addr: str, arr: np.ndarray, direct: bool,
              reps: int) -> tuple[float, float]:
    """Scatter arr to one worker and gather it back; return median seconds each way."""
    pushes, pulls = [], []
    for rep in range(reps + 1):
        arr[0] = rep  # a new token each time, so a hashed scatter really sends
        t0 = time.perf_counter()
        if direct:
            future = client.scatter(arr, workers=[addr], direct=True, hash=False)
        else:
            future = client.scatter(arr, workers=[addr])
        push = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = client.gather(future, direct=True) if direct else client.gather(future)
        pull = time.perf_counter() - t0
        assert back.shape == arr.shape
        del back
        future.release()
        if rep > 0:  # rep 0 is the warm-up
            pushes.append(push)
            pulls.append(pull)
    return statistics.median(pushes), statistics.median(pulls)


def data(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W4: scatter/gather to one worker, and of 64 MiB across four; MB/s."""
    cluster.start(settings.startup_timeout(cluster.n))
    client = cluster.client
    assert client is not None
    addrs = cluster.worker_addresses()
    for size_mib in settings.w4_sizes_mib:
        arr = np.random.default_rng(0).random(size_mib * MIB // 8)
        # "direct": client <-> worker without the scheduler, and no hashing.
        for direct, path in ((False, "scatter"), (True, "direct")):
            with results.guard("W4", path):
                push, pull = push_pull(client, addrs[0], arr, direct, settings.w4_reps)
                results.add("W4", path, f"push_{size_mib}MiB_mbps",
                            round(arr.nbytes / push / 1e6, 1), 1)
                results.add("W4", path, f"pull_{size_mib}MiB_mbps",
                            round(arr.nbytes / pull / 1e6, 1), 1)
    variant = "scatter/gather direct"
    size_mib = settings.w4_scatter_mib
    with results.guard("W4", variant):
        arr = np.random.default_rng(1).random(size_mib * MIB // 8)
        scatters, gathers = [], []
        for rep in range(settings.w4_reps + 1):
            t0 = time.perf_counter()
            futures = client.scatter(np.array_split(arr, len(addrs)), workers=addrs,
                                     direct=True, hash=False)
            scatter = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = np.concatenate(client.gather(futures, direct=True))
            gather = time.perf_counter() - t0
            assert back.shape == arr.shape
            client.cancel(futures)
            del futures
            if rep > 0:
                scatters.append(scatter)
                gathers.append(gather)
        results.add("W4", variant, f"scatter_{size_mib}MiB_mbps",
                    round(arr.nbytes / statistics.median(scatters) / 1e6, 1), cluster.n)
        results.add("W4", variant, f"gather_{size_mib}MiB_mbps",
                    round(arr.nbytes / statistics.median(gathers) / 1e6, 1), cluster.n)


def run_sleeps(client: Client, settings: Settings, kill_pid: int | None) -> dict[str, Any]:
    """Submit the W5 tasks, optionally SIGKILL one worker; count what came back."""
    t0 = time.perf_counter()
    futures = client.map(sleep_task, [settings.w5_task_s] * settings.w5_tasks,
                         range(settings.w5_tasks), pure=False)
    if kill_pid is not None:
        kill_later(kill_pid, max(0.0, settings.w5_kill_after_s - (time.perf_counter() - t0)))
    done, errors = 0, []
    deadline = time.monotonic() + settings.w5_timeout_s
    for future in futures:
        try:
            future.result(timeout=max(0.01, deadline - time.monotonic()))
            done += 1
        except Exception as exc:
            errors.append(type(exc).__name__)
    return {"wall_s": time.perf_counter() - t0, "done": done, "errors": sorted(set(errors))}


def fault(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W5: sleep tasks on four workers, without and with one worker SIGKILLed."""
    cluster.start(settings.startup_timeout(cluster.n))
    client = cluster.client
    assert client is not None
    variant = "map"
    with results.guard("W5", variant):
        base = run_sleeps(client, settings, None)
        pids = client.run(os.getpid)
        out = run_sleeps(client, settings, pids[sorted(pids)[-1]])
        record_fault(results, variant, settings, base, out)


PHASES = {"scale": scale, "throughput": throughput, "data": data, "fault": fault}


def main() -> None:
    """Run one phase against a fresh cluster and print its JSON document."""
    args = parse_args()
    install_term_handler()
    become_subreaper()
    run_phase(args, Results(SYSTEM, distributed.__version__, args.phase), PHASES,
              lambda n, workdir: Cluster(n, workdir, GridSpec.from_json(args.grid)),
              "bench-dask-")


if __name__ == "__main__":
    main()

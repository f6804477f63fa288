"""Workloads of issue 6 on ipyparallel, one phase per run; JSON on stdout.

Run inside bench/.venv-peers:  python peers_ipyparallel.py scale --engines 8
The cluster is ``ipcluster start --daemonize=False`` as a child process, so
every engine, nanny and controller process is one of our descendants.
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

import ipyparallel as ipp
import numpy as np
from common import (
    MIB,
    Results,
    Settings,
    become_subreaper,
    cmdline,
    descendants,
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
from grid import GridSpec

SYSTEM = "ipyparallel"


def noop(*args: Any) -> None:
    """Do nothing: the task of the latency and throughput workloads."""


def sleep_task(seconds: float) -> float:
    """Sleep: the task of the fault workload."""
    import time
    time.sleep(seconds)
    return seconds


def json_file_ready(path: Path) -> bool:
    """Tell whether path holds a complete JSON document (it is written non-atomically)."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


class Cluster:
    """An ipcluster child process with N engines, and a connected Client."""

    def __init__(self, n: int, workdir: Path, grid: GridSpec | None = None) -> None:
        self.n = n
        self.grid = grid  # cross-host: the controller on ctl, engines on the engine hosts
        self.profile_dir = workdir / f"profile_ipp_{n}"
        self.log_path = workdir / f"ipcluster_{n}.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.rc: ipp.Client | None = None
        self.startup_s: float | None = None

    def start(self, timeout: float) -> float:
        """Start the cluster; return seconds until all N engines registered."""
        ipcluster = str(Path(sys.executable).with_name("ipcluster"))
        env = dict(os.environ, IPYTHONDIR=str(self.profile_dir.parent / "ipython"))
        t0 = time.monotonic()
        if self.grid is not None:
            self._start_across_hosts(env)
        else:
            with open(self.log_path, "wb") as logf:
                self.proc = subprocess.Popen(
                    [ipcluster, "start", f"-n={self.n}", f"--profile-dir={self.profile_dir}",
                     "--daemonize=False", "--log-level=WARN"],
                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                self.procs.append(self.proc)
        url_file = self.profile_dir / "security" / "ipcontroller-client.json"
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or json_file_ready(url_file),
                   timeout, what="controller connection file")
        if self.proc.poll() is not None:
            raise RuntimeError(f"ipcluster exited with {self.proc.returncode}; see {self.log_path}")
        remaining = max(1.0, timeout - (time.monotonic() - t0))
        self.rc = ipp.Client(str(url_file), timeout=remaining)
        self.rc.wait_for_engines(self.n, timeout=max(1.0, timeout - (time.monotonic() - t0)))
        self.startup_s = time.monotonic() - t0
        return self.startup_s

    def _start_across_hosts(self, env: dict[str, str]) -> None:
        """ipcontroller on the ctl host, one ipengine process per engine elsewhere."""
        grid = self.grid
        assert grid is not None
        bin_dir = Path(sys.executable).parent
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                grid.on(grid.ctl, [str(bin_dir / "ipcontroller"),
                                   f"--profile-dir={self.profile_dir}",
                                   f"--ip={grid.ctl.address}", "--log-level=WARN"]),
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            self.procs.append(self.proc)
            engine_file = self.profile_dir / "security" / "ipcontroller-engine.json"
            wait_until(lambda: json_file_ready(engine_file), 60, what="engine connection file")
            for host, k in grid.spread(self.n):
                for _ in range(k):
                    self.procs.append(subprocess.Popen(
                        grid.on(host, [str(bin_dir / "ipengine"),
                                       f"--profile-dir={self.profile_dir}",
                                       "--log-level=WARN"]),
                        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env=env))

    def stop(self) -> None:
        """Stop engines and controller, whatever state they are in."""
        if self.rc is not None:
            try:
                self.rc.close()
            except Exception as exc:
                log(f"closing client: {exc}")
        # ipcluster stops its controller and engines on SIGTERM; stop_tree
        # kills what is left after the grace period.
        for proc in reversed(self.procs):
            stop_tree(proc.pid, grace=15.0)
            proc.wait(5)

    def not_engines(self) -> set[int]:
        """Return the pids of ipcluster and the controller's processes."""
        if self.grid is not None:
            return {p for p in descendants(os.getpid())
                    if "ipcontroller" in cmdline(p) or "ipyparallel.controller" in cmdline(p)}
        assert self.proc is not None
        pids = {self.proc.pid}
        pids.update(p for p in descendants(self.proc.pid) if "ipyparallel.controller" in cmdline(p))
        return pids


def scale(results: Results, cluster: Cluster, settings: Settings) -> None:
    """Start-up time, memory per engine, W1 latency-all, and W2 when N == 1."""
    n = cluster.n
    try:
        results.add("START", "ipcluster", "startup_s",
                    round(cluster.start(settings.startup_timeout(n)), 3), n)
    except Exception as exc:
        results.error("START", "ipcluster", f"{type(exc).__name__}: {exc}"[:500], n)
        for variant in ("execute", "apply"):
            results.error("W1", variant, "cluster did not start", n)
        return
    rc = cluster.rc
    assert rc is not None
    dview = rc[:]
    with results.guard("W1", "execute", n):
        results.add_latencies("W1", "execute", time_calls(
            lambda: dview.execute("pass", block=True), settings.w1_reps, settings.w1_warmup), n)
    with results.guard("W1", "apply", n):
        results.add_latencies("W1", "apply", time_calls(
            lambda: dview.apply_sync(lambda: None), settings.w1_reps, settings.w1_warmup), n)
    with results.guard("MEM", "engine+nanny", n):
        pids = dview.apply_sync(os.getpid)
        results.add("MEM", "engine+nanny", "pss_mib_per_engine",
                    round(engine_memory_mib(pids, cluster.not_engines()), 1), n)
    if n == 1:
        view = rc[0]
        with results.guard("W2", "apply"):
            results.add_latencies("W2", "apply", time_calls(
                lambda: view.apply_sync(noop), settings.w2_reps, 5), which=("p50", "min"))
        with results.guard("W2", "execute"):
            results.add_latencies("W2", "execute", time_calls(
                lambda: view.execute("pass", block=True), settings.w2_reps, 5),
                which=("p50", "min"))


def throughput(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W3: no-op tasks through the load-balanced view, tasks/s."""
    cluster.start(settings.startup_timeout(cluster.n))
    assert cluster.rc is not None
    lview = cluster.rc.load_balanced_view()
    count = settings.w3_tasks
    lview.map_sync(noop, range(20))
    with results.guard("W3", "map"):
        t0 = time.perf_counter()
        out = lview.map_sync(noop, range(count))
        elapsed = time.perf_counter() - t0
        assert len(out) == count
        results.add("W3", "map", "tasks_per_s", round(count / elapsed, 1))
    with results.guard("W3", "apply_per_task"):
        t0 = time.perf_counter()
        ars = [lview.apply_async(noop, i) for i in range(count)]
        for ar in ars:
            ar.get()
        elapsed = time.perf_counter() - t0
        results.add("W3", "apply_per_task", "tasks_per_s", round(count / elapsed, 1))


def data(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W4: push/pull to one engine, scatter/gather across four; MB/s."""
    cluster.start(settings.startup_timeout(cluster.n))
    rc = cluster.rc
    assert rc is not None
    view = rc[0]
    for size_mib in settings.w4_sizes_mib:
        variant = "push/pull"
        with results.guard("W4", variant):
            arr = np.random.default_rng(0).random(size_mib * MIB // 8)
            pushes, pulls = [], []
            view.push({"a": arr}, block=True)  # warm-up: connections, allocator
            view.pull("a", block=True)
            for _ in range(settings.w4_reps):
                t0 = time.perf_counter()
                view.push({"a": arr}, block=True)
                pushes.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                back = view.pull("a", block=True)
                pulls.append(time.perf_counter() - t0)
                assert back.shape == arr.shape
                del back
            view.execute("del a", block=True)
            results.add("W4", variant, f"push_{size_mib}MiB_mbps",
                        round(arr.nbytes / statistics.median(pushes) / 1e6, 1), 1)
            results.add("W4", variant, f"pull_{size_mib}MiB_mbps",
                        round(arr.nbytes / statistics.median(pulls) / 1e6, 1), 1)
    dview = rc[:]
    variant = "scatter/gather"
    size_mib = settings.w4_scatter_mib
    with results.guard("W4", variant):
        arr = np.random.default_rng(1).random(size_mib * MIB // 8)
        scatters, gathers = [], []
        for _ in range(settings.w4_reps):
            t0 = time.perf_counter()
            dview.scatter("x", arr, block=True)
            scatters.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = dview.gather("x", block=True)
            gathers.append(time.perf_counter() - t0)
            assert back.shape == arr.shape
        results.add("W4", variant, f"scatter_{size_mib}MiB_mbps",
                    round(arr.nbytes / statistics.median(scatters) / 1e6, 1), cluster.n)
        results.add("W4", variant, f"gather_{size_mib}MiB_mbps",
                    round(arr.nbytes / statistics.median(gathers) / 1e6, 1), cluster.n)


def run_sleeps(lview: Any, settings: Settings, kill_pid: int | None) -> dict[str, Any]:
    """Submit the W5 tasks, optionally SIGKILL one engine; count what came back."""
    t0 = time.perf_counter()
    ars = [lview.apply_async(sleep_task, settings.w5_task_s) for _ in range(settings.w5_tasks)]
    if kill_pid is not None:
        kill_later(kill_pid, max(0.0, settings.w5_kill_after_s - (time.perf_counter() - t0)))
    done, errors = 0, []
    deadline = time.monotonic() + settings.w5_timeout_s
    for ar in ars:
        try:
            ar.get(timeout=max(0.01, deadline - time.monotonic()))
            done += 1
        except Exception as exc:
            errors.append(type(exc).__name__)
    return {"wall_s": time.perf_counter() - t0, "done": done, "errors": sorted(set(errors))}


def fault(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W5: sleep tasks on four engines, without and with one engine SIGKILLed."""
    cluster.start(settings.startup_timeout(cluster.n))
    rc = cluster.rc
    assert rc is not None
    lview = rc.load_balanced_view()
    lview.set_flags(retries=1)
    variant = "lb_retries1"
    with results.guard("W5", variant):
        base = run_sleeps(lview, settings, None)
        pids = rc[:].apply_sync(os.getpid)
        out = run_sleeps(lview, settings, pids[-1])
        record_fault(results, variant, settings, base, out)


PHASES = {"scale": scale, "throughput": throughput, "data": data, "fault": fault}


def main() -> None:
    """Run one phase against a fresh cluster and print its JSON document."""
    args = parse_args()
    install_term_handler()
    become_subreaper()
    run_phase(args, Results(SYSTEM, ipp.__version__, args.phase), PHASES,
              lambda n, workdir: Cluster(n, workdir, GridSpec.from_json(args.grid)),
              "bench-ipp-")


if __name__ == "__main__":
    main()

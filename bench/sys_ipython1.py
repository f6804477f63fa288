"""Workloads of issue 6 on ipython1 itself, one phase per run; JSON on stdout.

Run in the project's venv, from the repository root:
``python bench/sys_ipython1.py scale --engines 8``.  The cluster is
``python -m ipython1.scripts.ipcluster --profile P start -n N --daemon`` with
IPYTHON1_DIR in a temporary directory; this process makes itself a child
subreaper, so the daemonized controller and engines stay its descendants and
are stopped even if ``ipcluster stop`` fails.  If ipython1's client API is not
there (or fails), every workload of the phase is recorded as an error entry,
so run.py still writes the peers' table.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

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
    phase_engines,
    record_fault,
    run_phase,
    time_calls,
    wait_until,
)
from grid import GridHost, GridSpec

SYSTEM = "ipython1"
PROFILE = "bench"

# What each phase measures, so a phase that cannot run is recorded as
# failed entries the table can show, rather than as a gap.
PHASE_WORKLOADS = {
    "scale": [("START", "ipcluster"), ("W1", "execute"), ("W1", "map"),
              ("MEM", "engine"), ("W2", "execute"), ("W2", "task")],
    "throughput": [("W3", "map"), ("W3", "run_per_task")],
    "data": [("W4", "push/pull"), ("W4", "scatter/gather")],
    "fault": [("W5", "task_retries1")],
}


def noop(*args: Any) -> None:
    """Do nothing: the task of the latency and throughput workloads."""


def sleep_task(seconds: float) -> float:
    """Sleep: the task of the fault workload."""
    import time
    time.sleep(seconds)
    return seconds


def one(value: Any) -> Any:
    """Unwrap the one-element list a single-target command may return."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


class Cluster:
    """An ipython1 cluster started with ipcluster, and its clients."""

    def __init__(self, n: int, workdir: Path, client: ModuleType) -> None:
        self.n = n
        self.client = client
        self.env = dict(os.environ, IPYTHON1_DIR=str(workdir / "ipython1"))
        self.security = workdir / "ipython1" / f"cluster_{PROFILE}" / "security"
        self.log_path = workdir / f"ipcluster_{n}.log"
        self.started = False
        self.mec: Any = None
        self._tc: Any = None

    def _ipcluster(self, *args: str, timeout: float) -> None:
        with open(self.log_path, "ab") as logf:
            # --profile belongs to ipcluster itself, before the subcommand.
            subprocess.run([sys.executable, "-m", "ipython1.scripts.ipcluster",
                            "--profile", PROFILE, *args],
                           stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           env=self.env, timeout=timeout, check=True)

    def start(self, timeout: float) -> float:
        """Start the cluster; return seconds until all N engines registered."""
        t0 = time.monotonic()
        self.started = True
        self._ipcluster("start", "-n", str(self.n), "--daemon", "--timeout", f"{timeout:.0f}",
                        *controller_args(), timeout=timeout + 30)
        furl = self.security / "ipcontroller-mec.furl"
        wait_until(furl.exists, max(1.0, timeout - (time.monotonic() - t0)),
                   what="ipcontroller-mec.furl")
        self.mec = self.client.MultiEngineClient(str(furl))
        wait_until(lambda: len(self.mec.get_ids()) >= self.n,
                   max(1.0, timeout - (time.monotonic() - t0)), interval=0.05,
                   what=f"{self.n} engines registered")
        return time.monotonic() - t0

    @property
    def tc(self) -> Any:
        """Return the task farm client, connected on first use."""
        if self._tc is None:
            self._tc = self.client.TaskClient(str(self.security / "ipcontroller-task.furl"))
        return self._tc

    def stop(self) -> None:
        """Stop the cluster with ipcluster stop; main() kills what is left."""
        if not self.started:
            return
        try:
            self._ipcluster("stop", timeout=60)
        except Exception as exc:
            log(f"ipcluster stop: {exc}")

    def not_engines(self) -> set[int]:
        """Return the pids of the controller and of ipcluster."""
        return {p for p in descendants(os.getpid())
                if "ipcontroller" in cmdline(p) or "ipcluster" in cmdline(p)}

    def engine_pids(self) -> list[int]:
        """Return each engine's pid, in engine order."""
        self.mec.execute("import os as _os; _bench_pid = _os.getpid()")
        return [int(p) for p in self.mec.pull("_bench_pid")]


def controller_args() -> list[str]:
    """Return extra controller options: $IPYTHON1_BENCH_CONTROLLER_ARGS (--data-encryption=off)."""
    return os.environ.get("IPYTHON1_BENCH_CONTROLLER_ARGS", "").split()


class GridCluster(Cluster):
    """The same cluster across hosts: the controller on ctl, engines on the engine hosts.

    This process (the client) runs on the cli host (run.py --cross-host), so
    no same-host shortcut applies: commands take Foolscap, data the engines' data ports.
    """

    def __init__(self, n: int, workdir: Path, client: ModuleType, grid: GridSpec) -> None:
        super().__init__(n, workdir, client)
        self.grid = grid
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, host: GridHost, argv: list[str], name: str) -> None:
        with open(self.log_path.with_name(f"{name}.log"), "ab") as logf:
            self.procs.append(subprocess.Popen(
                self.grid.on(host, argv), stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env))

    def start(self, timeout: float) -> float:
        t0 = time.monotonic()
        self.started = True
        furl = self.security / "ipcontroller-mec.furl"
        self._spawn(self.grid.ctl, [sys.executable, "-m", "ipython1.scripts.ipcontroller",
                                    "--profile", PROFILE, "--ip", self.grid.ctl.address,
                                    *controller_args()],
                    "ipcontroller")
        wait_until(furl.exists, timeout, what="ipcontroller-mec.furl")
        for host, k in self.grid.spread(self.n):
            self._spawn(host, [sys.executable, "-m", "ipython1.scripts.ipengine", "--profile",
                               PROFILE, "--fork", str(k), "--connect-timeout",
                               f"{timeout:.0f}"], f"ipengine-{host.name}")
        self.mec = self.client.MultiEngineClient(str(furl))
        wait_until(lambda: len(self.mec.get_ids()) >= self.n,
                   max(1.0, timeout - (time.monotonic() - t0)), interval=0.05,
                   what=f"{self.n} engines registered")
        return time.monotonic() - t0

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()

    def not_engines(self) -> set[int]:
        return {p for p in descendants(os.getpid()) if "ipcontroller" in cmdline(p)}


def scale(results: Results, cluster: Cluster, settings: Settings) -> None:
    """Start-up time, memory per engine, W1 latency-all, and W2 when N == 1."""
    n = cluster.n
    try:
        results.add("START", "ipcluster", "startup_s",
                    round(cluster.start(settings.startup_timeout(n)), 3), n)
    except Exception as exc:
        results.error("START", "ipcluster", f"{type(exc).__name__}: {exc}"[:500], n)
        for variant in ("execute", "map"):
            results.error("W1", variant, "cluster did not start", n)
        return
    mec = cluster.mec
    with results.guard("W1", "execute", n):
        results.add_latencies("W1", "execute", time_calls(
            lambda: mec.execute("pass"), settings.w1_reps, settings.w1_warmup), n)
    with results.guard("W1", "map", n):
        seq = list(range(n))
        results.add_latencies("W1", "map", time_calls(
            lambda: mec.map(noop, seq), settings.w1_reps, settings.w1_warmup), n)
    with results.guard("MEM", "engine", n):
        results.add("MEM", "engine", "pss_mib_per_engine",
                    round(engine_memory_mib(cluster.engine_pids(), cluster.not_engines()), 1), n)
    if n == 1:
        target = mec.get_ids()[0]
        with results.guard("W2", "execute"):
            results.add_latencies("W2", "execute", time_calls(
                lambda: mec.execute("pass", targets=target), settings.w2_reps, 5),
                which=("p50", "min"))
        with results.guard("W2", "task"):
            tc, client = cluster.tc, cluster.client
            results.add_latencies("W2", "task", time_calls(
                lambda: tc.get_task_result(tc.run(client.MapTask(noop, args=(0,))), block=True),
                settings.w2_reps, 5), which=("p50", "min"))


def throughput(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W3: no-op tasks through the task farm, tasks/s."""
    cluster.start(settings.startup_timeout(cluster.n))
    tc, client = cluster.tc, cluster.client
    count = settings.w3_tasks
    tc.map(noop, list(range(20)))
    with results.guard("W3", "map"):
        t0 = time.perf_counter()
        out = tc.map(noop, list(range(count)))
        elapsed = time.perf_counter() - t0
        assert len(out) == count
        results.add("W3", "map", "tasks_per_s", round(count / elapsed, 1))
    with results.guard("W3", "run_per_task"):
        t0 = time.perf_counter()
        tids = [tc.run(client.MapTask(noop, args=(i,))) for i in range(count)]
        tc.barrier(tids)
        elapsed = time.perf_counter() - t0
        results.add("W3", "run_per_task", "tasks_per_s", round(count / elapsed, 1))


def data(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W4: push/pull to one engine, scatter/gather across four; MB/s."""
    import numpy as np

    cluster.start(settings.startup_timeout(cluster.n))
    mec = cluster.mec
    target = mec.get_ids()[0]
    for size_mib in settings.w4_sizes_mib:
        with results.guard("W4", "push/pull"):
            arr = np.random.default_rng(0).random(size_mib * MIB // 8)
            pushes, pulls = [], []
            for rep in range(settings.w4_reps + 1):
                t0 = time.perf_counter()
                mec.push({"a": arr}, targets=target)
                push = time.perf_counter() - t0
                t0 = time.perf_counter()
                back = one(mec.pull("a", targets=target))
                pull = time.perf_counter() - t0
                assert back.shape == arr.shape
                del back
                if rep > 0:  # rep 0 is the warm-up
                    pushes.append(push)
                    pulls.append(pull)
            mec.execute("del a", targets=target)
            results.add("W4", "push/pull", f"push_{size_mib}MiB_mbps",
                        round(arr.nbytes / statistics.median(pushes) / 1e6, 1), 1)
            results.add("W4", "push/pull", f"pull_{size_mib}MiB_mbps",
                        round(arr.nbytes / statistics.median(pulls) / 1e6, 1), 1)
    size_mib = settings.w4_scatter_mib
    with results.guard("W4", "scatter/gather"):
        arr = np.random.default_rng(1).random(size_mib * MIB // 8)
        scatters, gathers = [], []
        for rep in range(settings.w4_reps + 1):
            t0 = time.perf_counter()
            mec.scatter("x", arr)
            scatter = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = mec.gather("x")
            gather = time.perf_counter() - t0
            assert len(back) == len(arr)
            if rep > 0:
                scatters.append(scatter)
                gathers.append(gather)
        results.add("W4", "scatter/gather", f"scatter_{size_mib}MiB_mbps",
                    round(arr.nbytes / statistics.median(scatters) / 1e6, 1), cluster.n)
        results.add("W4", "scatter/gather", f"gather_{size_mib}MiB_mbps",
                    round(arr.nbytes / statistics.median(gathers) / 1e6, 1), cluster.n)


def run_sleeps(cluster: Cluster, settings: Settings, kill_pid: int | None) -> dict[str, Any]:
    """Submit the W5 tasks, optionally SIGKILL one engine; count what came back."""
    tc, client = cluster.tc, cluster.client
    t0 = time.perf_counter()
    tids = [tc.run(client.MapTask(sleep_task, args=(settings.w5_task_s,), retries=1))
            for _ in range(settings.w5_tasks)]
    if kill_pid is not None:
        kill_later(kill_pid, max(0.0, settings.w5_kill_after_s - (time.perf_counter() - t0)))
    outcome: dict[str, Any] = {"done": 0, "errors": []}

    def collect() -> None:
        for tid in tids:
            try:
                tc.get_task_result(tid, block=True)
                outcome["done"] += 1
            except Exception as exc:
                outcome["errors"].append(type(exc).__name__)

    # get_task_result has no deadline of its own; bound the wait here.
    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    thread.join(settings.w5_timeout_s)
    if thread.is_alive():
        outcome["errors"].append(f"timeout after {settings.w5_timeout_s:.0f} s")
    outcome["wall_s"] = time.perf_counter() - t0
    outcome["errors"] = sorted(set(outcome["errors"]))
    return outcome


def fault(results: Results, cluster: Cluster, settings: Settings) -> None:
    """W5: sleep tasks on four engines, without and with one engine SIGKILLed."""
    cluster.start(settings.startup_timeout(cluster.n))
    variant = "task_retries1"
    with results.guard("W5", variant):
        base = run_sleeps(cluster, settings, None)
        out = run_sleeps(cluster, settings, cluster.engine_pids()[-1])
        record_fault(results, variant, settings, base, out)


PHASES = {"scale": scale, "throughput": throughput, "data": data, "fault": fault}


def main() -> None:
    """Run one phase against a fresh cluster and print its JSON document."""
    args = parse_args()
    install_term_handler()
    become_subreaper()
    n = phase_engines(args)
    # The repository root, for a checkout that is not pip-installed.
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    try:
        import ipython1
        from ipython1.client import blocking as client
    except Exception as exc:  # the API is still being written: record, don't crash
        results = Results(SYSTEM, "unavailable", args.phase)
        for workload, variant in PHASE_WORKLOADS[args.phase]:
            if workload == "W2" and n != 1:
                continue
            results.error(workload, variant,
                          f"ipython1.client.blocking unavailable: {type(exc).__name__}: {exc}",
                          n if args.phase == "scale" and workload != "W2" else None)
        results.emit()
        return
    results = Results(SYSTEM, str(getattr(ipython1, "__version__", "dev")), args.phase)
    grid = GridSpec.from_json(args.grid)
    run_phase(args, results, PHASES,
              lambda n, workdir: GridCluster(n, workdir, client, grid) if grid
              else Cluster(n, workdir, client), "bench-ipython1-")


if __name__ == "__main__":
    main()

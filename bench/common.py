"""Shared helpers of the benchmark: timing, statistics, process trees, results.

Every system module (``sys_ipython1.py``, ``peers_ipyparallel.py``,
``peers_dask.py``) runs one *phase* per invocation and prints one JSON
document on stdout::

    {"system": "dask", "version": "...", "phase": "scale", "entries": [...]}

Each entry is one figure (or one failure) of one workload::

    {"workload": "W1", "variant": "run", "engines": 8, "metric": "p50_ms", "value": 9.4}
    {"workload": "W1", "variant": "run", "engines": 256, "error": "timeout after 800 s"}

This module only needs the standard library; psutil and NumPy are used when
present, so ``sys_ipython1.py`` runs in whatever venv the project has.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

# Phases and the cluster size each one needs; "scale" takes --engines.
PHASES = ("scale", "throughput", "data", "fault")
THROUGHPUT_ENGINES = 2
DATA_ENGINES = 4
FAULT_ENGINES = 4


class Settings:
    """Repetitions and sizes of every workload; --quick shrinks them."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.w1_warmup = 2 if quick else 3
        self.w1_reps = 10 if quick else 30
        self.w2_reps = 50 if quick else 200
        self.w3_tasks = 500 if quick else 2000
        self.w4_sizes_mib = (8, 256)
        self.w4_reps = 1 if quick else 3
        self.w4_scatter_mib = 64
        self.w5_tasks = 200
        self.w5_task_s = 0.05
        self.w5_kill_after_s = 0.5
        self.w5_timeout_s = 120.0

    @staticmethod
    def startup_timeout(n: int) -> float:
        """Allow generous but bounded time for N engines to register."""
        return 60.0 + 1.5 * n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the arguments every system module takes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("--engines", type=int, default=1, help="N for the scale phase")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=None, help="temporary directory for cluster files")
    parser.add_argument("--grid", default=None,
                        help="cross-host run: JSON of the grid hosts (bench/grid.py)")
    return parser.parse_args(argv)


# -- statistics -------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) with linear interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_calls(fn: Callable[[], Any], reps: int, warmup: int = 0) -> list[float]:
    """Call fn warmup times untimed, then reps times; return seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# -- results ----------------------------------------------------------------


class Results:
    """Collect entries of one phase and print them as one JSON document."""

    def __init__(self, system: str, version: str, phase: str) -> None:
        self.doc: dict[str, Any] = {
            "system": system,
            "version": version,
            "phase": phase,
            "entries": [],
        }

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.doc["entries"]  # type: ignore[no-any-return]

    def add(self, workload: str, variant: str, metric: str, value: Any,
            engines: int | None = None) -> None:
        """Record one figure."""
        entry: dict[str, Any] = {"workload": workload, "variant": variant,
                                 "metric": metric, "value": value}
        if engines is not None:
            entry["engines"] = engines
        self.entries.append(entry)
        log(f"{workload} {variant} N={engines} {metric} = {value}")

    def add_latencies(self, workload: str, variant: str, seconds: list[float],
                      engines: int | None = None, which: tuple[str, ...] = ("p50", "p90", "min")
                      ) -> None:
        """Record p50/p90/min of a list of durations, in milliseconds."""
        figures = {"p50": percentile(seconds, 50), "p90": percentile(seconds, 90),
                   "min": min(seconds)}
        for name in which:
            self.add(workload, variant, f"{name}_ms", round(figures[name] * 1e3, 3), engines)

    def error(self, workload: str, variant: str, message: str,
              engines: int | None = None) -> None:
        """Record that a workload failed, so the table shows it instead of a gap."""
        entry: dict[str, Any] = {"workload": workload, "variant": variant, "error": message}
        if engines is not None:
            entry["engines"] = engines
        self.entries.append(entry)
        log(f"{workload} {variant} N={engines} FAILED: {message}")

    @contextlib.contextmanager
    def guard(self, workload: str, variant: str, engines: int | None = None) -> Iterator[None]:
        """Turn an exception inside the block into an error entry."""
        try:
            yield
        except Exception as exc:  # one failed workload must not lose the others
            traceback.print_exc(file=sys.stderr)
            self.error(workload, variant, f"{type(exc).__name__}: {exc}"[:500], engines)

    def emit(self) -> None:
        """Print the document on stdout (the only thing printed there)."""
        sys.stdout.write(json.dumps(self.doc) + "\n")
        sys.stdout.flush()


def log(message: str) -> None:
    """Print progress on stderr; stdout is reserved for the JSON document."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# -- processes --------------------------------------------------------------


def become_subreaper() -> None:
    """Adopt orphaned descendants, so daemonized cluster processes stay findable."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _proc_table() -> dict[int, int]:
    """Return {pid: ppid} for every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(name)] = int(fields[1])
    return table


def descendants(pid: int) -> list[int]:
    """Return every live descendant of pid (children first)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, parent in table.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(children.get(p, []))
    return found


def parent_of(pid: int) -> int | None:
    """Return the parent pid of pid, or None if it is gone."""
    return _proc_table().get(pid)


def cmdline(pid: int) -> str:
    """Return the command line of pid, or '' if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Tell whether pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def reap() -> None:
    """Collect exit statuses of any finished children (we may be a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_pids(pids: list[int], grace: float = 5.0) -> list[int]:
    """Send TERM to pids, KILL the ones still alive after grace; return those killed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.1)
    killed = [p for p in pids if alive(p)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    return killed


def stop_tree(root: int, grace: float = 5.0) -> None:
    """Stop root and all its descendants: TERM, then KILL after grace."""
    pids = descendants(root) + [root]
    stop_pids(pids, grace)
    # Descendants started while we were stopping, or orphans re-parented to us.
    leftovers = [p for p in descendants(root) if alive(p)]
    if leftovers:
        stop_pids(leftovers, 1.0)


def stop_my_descendants(grace: float = 5.0) -> None:
    """Stop every process this one started, directly or not."""
    reap()  # orphans that already exited were re-parented to us as zombies
    pids = [p for p in descendants(os.getpid()) if alive(p)]
    if pids:
        log(f"stopping {len(pids)} leftover processes: "
            + "; ".join(f"{p} {cmdline(p)[:120]}" for p in pids))
        stop_pids(pids, grace)
        stop_pids([p for p in descendants(os.getpid()) if alive(p)], 1.0)
    reap()


def pss_bytes(pid: int) -> int:
    """Return the proportional set size of pid in bytes."""
    try:
        import psutil
        return int(psutil.Process(pid).memory_full_info().pss)
    except ImportError:
        pass
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss for {pid}")


def engine_memory_mib(engine_pids: list[int], not_engines: set[int]) -> float:
    """Return PSS MiB per engine, summed over engines and their nannies.

    A nanny is a child of an engine (ipyparallel) or its parent (dask); a
    parent counts unless it is one of not_engines (the launcher, the
    controller) or this process.
    """
    pids = set(engine_pids)
    for pid in engine_pids:
        pids.update(descendants(pid))
        parent = parent_of(pid)
        if parent and parent not in not_engines and parent != os.getpid() and parent != 1:
            pids.add(parent)
    total = sum(pss_bytes(p) for p in pids)
    return total / len(engine_pids) / MIB


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1,
               what: str = "condition") -> float:
    """Poll condition until true; return the seconds waited or raise TimeoutError."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} not met after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - t0


def install_term_handler() -> None:
    """Turn SIGTERM into SystemExit so finally blocks shut clusters down."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def kill_later(pid: int, delay: float) -> threading.Thread:
    """SIGKILL pid after delay seconds, from a background thread."""
    def run() -> None:
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            log(f"SIGKILLed engine pid {pid}")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record_fault(results: Results, variant: str, settings: Settings, base: dict[str, Any],
                 out: dict[str, Any]) -> None:
    """Record W5: the no-fault run `base` and the run `out` with an engine killed."""
    results.add("W5", variant, "nofault_wall_s", round(base["wall_s"], 3))
    results.add("W5", variant, "completed", out["done"] == settings.w5_tasks)
    results.add("W5", variant, "tasks_lost", settings.w5_tasks - out["done"])
    results.add("W5", variant, "wall_s", round(out["wall_s"], 3))
    results.add("W5", variant, "wall_over_nofault", round(out["wall_s"] / base["wall_s"], 2))
    if out["errors"]:
        results.add("W5", variant, "errors", ",".join(out["errors"]))


PHASE_ENGINES = {"throughput": THROUGHPUT_ENGINES, "data": DATA_ENGINES, "fault": FAULT_ENGINES}


def phase_engines(args: argparse.Namespace) -> int:
    """Return how many engines a phase runs on (scale: the --engines asked for)."""
    return int(args.engines) if args.phase == "scale" else PHASE_ENGINES[args.phase]


def run_phase(args: argparse.Namespace, results: Results,
              phases: dict[str, Callable[[Results, Any, Settings], None]],
              make_cluster: Callable[[int, Path], Any], workdir_prefix: str) -> None:
    """Run one phase against a fresh cluster; always stop it and print the JSON document."""
    n = phase_engines(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=workdir_prefix))
    cluster = make_cluster(n, workdir)
    try:
        with results.guard(args.phase.upper(), "phase", n):
            phases[args.phase](results, cluster, Settings(args.quick))
    finally:
        try:
            cluster.stop()
        finally:
            stop_my_descendants()
            results.emit()

"""Run the benchmark of issue 6: ipython1 side by side with ipyparallel and dask.

    python bench/run.py [--quick] [--systems ipython1,ipyparallel,dask]
                        [--engines 1,8,32] [--out bench/results]

Installs the peers into bench/.venv-peers (once), then runs every phase of
every system as a child process with its own deadline; each child starts and
stops its own cluster and prints one JSON document.  Writes results.json,
results.md and PNG plots to --out.  Needs only the standard library itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grid
import report
from common import (
    DATA_ENGINES,
    FAULT_ENGINES,
    THROUGHPUT_ENGINES,
    Settings,
    become_subreaper,
    install_term_handler,
    log,
    stop_my_descendants,
    stop_tree,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv-peers"
PEER_PACKAGES = ["ipyparallel", "dask[distributed]", "numpy", "psutil", "matplotlib"]
PEER_IMPORTS = "import ipyparallel, distributed, numpy, psutil, matplotlib"
SYSTEMS = {
    "ipython1": "sys_ipython1.py",
    "ipyparallel": "peers_ipyparallel.py",
    "dask": "peers_dask.py",
}
DEFAULT_ENGINES = (1, 8, 32, 64, 128, 256)
QUICK_ENGINES = (1, 8)
PHASE_TIMEOUT_S = 300.0


GRID: Any = None  # the hosts of a --cross-host run (tests.hostgrid.HostGrid)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse run.py's command line."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="N = 1,8 and fewer repetitions (a few minutes)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated, from: " + ", ".join(SYSTEMS))
    parser.add_argument("--engines", default=None,
                        help="comma-separated N for W1, start-up and memory "
                             f"(default {','.join(map(str, DEFAULT_ENGINES))}; "
                             f"--quick: {','.join(map(str, QUICK_ENGINES))})")
    parser.add_argument("--out", default=str(BENCH / "results"), help="output directory")
    parser.add_argument("--cross-host", action="store_true",
                        help="run each system across network-namespace hosts (as root): "
                             "controller/scheduler on one, engines/workers on two, the "
                             "client on a fourth (bench/grid.py)")
    parser.add_argument("--ipython1-python", default=None,
                        help="python of the project's venv (default: $IPYTHON1_PYTHON, "
                             "else .venv/bin/python in the repository, else this python)")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)}")
    if args.engines is None:
        args.engines = list(QUICK_ENGINES if args.quick else DEFAULT_ENGINES)
    else:
        args.engines = sorted({int(n) for n in args.engines.split(",") if n.strip()})
    return args


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_peer_venv() -> Path:
    """Create bench/.venv-peers with the peers installed, unless it already works."""
    python = venv_python()
    if python.exists() and subprocess.run([str(python), "-c", PEER_IMPORTS],
                                          capture_output=True).returncode == 0:
        return python
    log(f"creating {VENV} with {', '.join(PEER_PACKAGES)}")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    return python


def ipython1_python(option: str | None) -> str:
    """Pick the project's python for sys_ipython1.py."""
    if option:
        return option
    if os.environ.get("IPYTHON1_PYTHON"):
        return os.environ["IPYTHON1_PYTHON"]
    local = REPO / ".venv" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def phase_timeout(phase: str, n: int) -> float:
    """Bound one child: start-up allowance plus the workloads, and a margin to stop."""
    if phase == "scale":
        # dask's client.run on 256 workers takes ~17 s a repetition here.
        return Settings.startup_timeout(n) + 240.0 + 4.0 * n
    return PHASE_TIMEOUT_S


def run_child(python: str, script: str, phase: str, args: list[str], timeout: float,
              log_path: Path) -> dict[str, Any]:
    """Run one phase as a child; return its JSON document, or one describing the failure."""
    command = [python, str(BENCH / script), *([phase] if phase else []), *args]
    if GRID is not None:  # the client runs on the grid's cli host; --grid tells the rest
        command = GRID["cli"].command([*command, "--grid", grid.describe(GRID)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    t0 = time.monotonic()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=logf,
                                stdin=subprocess.DEVNULL, cwd=REPO, env=env)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
            failure = None if proc.returncode == 0 else f"exited with {proc.returncode}"
        except subprocess.TimeoutExpired:
            # TERM lets the child shut its cluster down and print what it has.
            stop_tree(proc.pid, grace=60.0)
            stdout, _ = proc.communicate()
            failure = f"timeout after {timeout:.0f} s"
        except BaseException:  # Ctrl-C or TERM: let the child stop its cluster first
            stop_tree(proc.pid, grace=30.0)
            raise
    # Anything the child left behind was re-parented to us (we are a subreaper).
    stop_my_descendants()
    doc = None
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            doc = json.loads(line)
            break
        except ValueError:
            continue
    if doc is None:
        doc = {"entries": []}
    if failure:
        doc["entries"].append({"workload": phase.upper(), "variant": "phase",
                               "error": f"{failure}; see {log_path}",
                               **({"engines": int(args[1])} if phase == "scale" else {})})
    log(f"  {script} {phase} {' '.join(args)}: {time.monotonic() - t0:.1f} s, "
        f"{sum('value' in e for e in doc['entries'])} figures, "
        f"{sum('error' in e for e in doc['entries'])} errors")
    return doc  # type: ignore[no-any-return]


def run_system(system: str, python: str, engines: list[int], quick: bool,
               logs: Path) -> dict[str, Any]:
    """Run every phase of one system; return its version and all entries."""
    script = SYSTEMS[system]
    extra = ["--quick"] if quick else []
    out: dict[str, Any] = {"version": None, "python": python, "entries": []}
    startup_failed_at = None
    plan = [("scale", n) for n in engines] + [
        ("throughput", THROUGHPUT_ENGINES), ("data", DATA_ENGINES), ("fault", FAULT_ENGINES)]
    for phase, n in plan:
        if phase == "scale" and startup_failed_at is not None:
            out["entries"].append({"workload": "SCALE", "variant": "skipped", "engines": n,
                                   "error": f"not tried: start-up failed at N={startup_failed_at}"})
            continue
        args = ["--engines", str(n), *extra] if phase == "scale" else extra
        doc = run_child(python, script, phase, args, phase_timeout(phase, n),
                        logs / f"{system}_{phase}_{n}.log")
        out["version"] = out["version"] or doc.get("version")
        out["entries"] += doc["entries"]
        if phase == "scale" and not any(e["workload"] == "START" and "value" in e
                                        for e in doc["entries"]):
            startup_failed_at = n
    return out


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()} ({platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} cores, {mem:.0f} GiB)")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results; return the exit status."""
    args = parse_args(argv)
    install_term_handler()
    become_subreaper()
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
                 "python": sys.version.split()[0], "quick": args.quick,
                 "engines": args.engines, "systems": args.systems},
        "systems": {},
    }
    global GRID
    try:
        if args.cross_host:
            GRID = grid.make_grid()
            doc["meta"]["cross_host"] = True
        peers = ensure_peer_venv()
        log("reference: loopback TCP and memcpy bandwidth")
        doc["reference"] = run_child(str(peers), "reference.py", "", [], PHASE_TIMEOUT_S,
                                     logs / "reference.log")
        for system in args.systems:
            python = ipython1_python(args.ipython1_python) if system == "ipython1" else str(peers)
            log(f"{system} ({python})")
            doc["systems"][system] = run_system(system, python, args.engines, args.quick, logs)
    finally:
        stop_my_descendants()
        if GRID is not None:
            GRID.stop()
        (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        (out / "results.md").write_text(report.markdown(doc))
        log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    plot = subprocess.run([str(venv_python()), str(BENCH / "report.py"), "plots",
                           str(out / "results.json"), str(out)], capture_output=True, text=True)
    if plot.returncode != 0:
        log(f"plots failed:\n{plot.stderr}")
        return 1
    log("wrote " + ", ".join(Path(p).name for p in plot.stdout.split()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

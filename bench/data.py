"""Benchmark of issue 21: a data set on disk, analysed where it lies.

    python bench/data.py                      # ~8 GiB as 64 npy files, 8 engines / workers
    python bench/data.py --gib 1 --files 16   # smaller
    python bench/data.py --systems ipython1   # one side only
    python bench/data.py --repeat 2           # ipython1, dask, ipython1, dask

Generates float64 data as npy files in a temporary directory (deleted at
the end, even on failure), then, in one run:

- ipython1: `ipcluster start -n 8`, `mec.load_partitions(..., mmap=True)`,
  then the DistArray's mean, std and a 100-bin histogram, each folded
  among the engines;
- dask.array: `da.from_npy_stack` (memory-mapped) on a `LocalCluster` of 8
  single-threaded worker processes, mean, std and `da.histogram` computed
  together with `dask.compute`.

Each side runs as its own child process (ipython1 with the project's python,
dask with bench/.venv-peers), which samples its own RSS (the client's; for
dask that process also holds the LocalCluster's scheduler) and the
controller's (ipython1) every 20 ms. Results go to --out (data.json,
data.md) and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MIB = 2**20
BINS = 100
RANGE = (-5.0, 5.0)


class RssSampler:
    """Sample processes' RSS in a thread: peak and first/last values, in MiB."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0.0)
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                rss = proc.memory_info().rss / MIB
            except Exception:
                continue
            self.first.setdefault(name, rss)
            self.last[name] = rss
            self.peak[name] = max(self.peak[name], rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def generate(directory: Path, gib: float, files: int) -> dict[str, Any]:
    """Write files npy files of float64 normal values, gib GiB in all, and dask's info file."""
    import pickle

    import numpy as np

    rows = int(gib * 2**30 / 8 / files)
    rng = np.random.default_rng(21)
    t0 = time.perf_counter()
    for i in range(files):
        np.save(directory / f"{i}.npy", rng.standard_normal(rows))
    # from_npy_stack reads the layout from this file (what da.to_npy_stack writes).
    with open(directory / "info", "wb") as f:
        pickle.dump({"chunks": ((rows,) * files,), "dtype": np.dtype("float64"), "axis": 0}, f)
    os.sync()
    return {"rows_per_file": rows, "files": files, "bytes": rows * files * 8,
            "generate_s": time.perf_counter() - t0}


def run_ipython1(directory: Path, engines: int, mmap: bool) -> dict[str, Any]:
    """Start an ipython1 cluster, load and reduce; return times and memory."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from ipython1.client.blocking import MultiEngineClient

    work = Path(tempfile.mkdtemp(prefix="bench-data-ipython1-"))
    env = dict(os.environ, IPYTHON1_DIR=str(work))
    ipcluster = [sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile", "benchdata"]
    out: dict[str, Any] = {"system": "ipython1", "variant": "mmap" if mmap else "read"}
    try:
        subprocess.run([*ipcluster, "start", "-n", str(engines), "--daemon", "--timeout", "120"],
                       env=env, check=True, capture_output=True, timeout=180)
        furl = work / "cluster_benchdata" / "security" / "ipcontroller-mec.furl"
        mec = MultiEngineClient(str(furl))
        deadline = time.monotonic() + 120
        while len(mec.get_ids()) < engines and time.monotonic() < deadline:
            time.sleep(0.1)
        controller = int((work / "cluster_benchdata" / "pid" / "ipcontroller.pid")
                         .read_text().split()[0])
        with RssSampler({"client": os.getpid(), "controller": controller}) as rss:
            t0 = time.perf_counter()
            mec.load_partitions("x", str(directory / "*.npy"), mmap=mmap)
            x = mec.distarray("x")
            t_load = time.perf_counter()
            mean = x.mean()
            std = x.std()
            counts, _ = x.histogram(BINS, RANGE)
            t_end = time.perf_counter()
        out.update(load_s=t_load - t0, stats_s=t_end - t_load, wall_s=t_end - t0,
                   client_peak_mib=rss.peak["client"], client_start_mib=rss.first["client"],
                   controller_start_mib=rss.first["controller"],
                   controller_peak_mib=rss.peak["controller"],
                   controller_end_mib=rss.last["controller"],
                   mean=float(mean), std=float(std), hist_total=int(np.sum(counts)))
        mec.close()
    finally:
        subprocess.run([*ipcluster, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)
    return out


def run_dask(directory: Path, workers: int) -> dict[str, Any]:
    """Start a LocalCluster, compute the same statistics; return times and memory."""
    import dask
    import dask.array as da
    import numpy as np
    from distributed import Client, LocalCluster

    out: dict[str, Any] = {"system": "dask.array", "variant": f"dask {dask.__version__}"}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=0, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(workers)
        with RssSampler({"client": os.getpid()}) as rss:
            t0 = time.perf_counter()
            x = da.from_npy_stack(str(directory))  # memory-mapped, one chunk per file
            mean, std, (counts, _) = dask.compute(x.mean(), x.std(),
                                                  da.histogram(x, bins=BINS, range=RANGE))
            t_end = time.perf_counter()
        out.update(load_s=None, stats_s=None, wall_s=t_end - t0,
                   client_peak_mib=rss.peak["client"], client_start_mib=rss.first["client"],
                   mean=float(mean), std=float(std), hist_total=int(np.sum(counts)))
    return out


def peers_python() -> str:
    sys.path.insert(0, str(BENCH))
    import run

    return str(run.ensure_peer_venv())


def table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [f"Data: {meta['bytes'] / 2**30:.2f} GiB float64 in {meta['files']} npy files; "
             f"{meta['engines']} engines / workers; mean, std, {BINS}-bin histogram.", "",
             "| system | variant | wall s | load s | stats s | client peak RSS MiB "
             "| controller RSS MiB (start / peak / end) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r.get('variant', '')} | error: {r['error']} "
                         "| | | | |")
            continue
        ctl = (f"{r['controller_start_mib']:.0f} / {r['controller_peak_mib']:.0f} / "
               f"{r['controller_end_mib']:.0f}" if "controller_peak_mib" in r else "-")
        lines.append(f"| {r['system']} | {r['variant']} | {fmt(r['wall_s'], '.2f')} | "
                     f"{fmt(r['load_s'], '.2f')} | {fmt(r['stats_s'], '.2f')} | "
                     f"{r['client_peak_mib']:.0f} | {ctl} |")
    return "\n".join(lines)


def child(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    if args.child == "ipython1":
        result = run_ipython1(directory, args.engines, args.mmap)
    else:
        result = run_dask(directory, args.engines)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=8.0)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--systems", default="ipython1,dask")
    parser.add_argument("--read", action="store_true",
                        help="also run ipython1 reading the files into memory (mmap=False)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the systems this many times, alternating (the machine's load "
                             "varies)")
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--datadir", default=None, help="parent of the generated data")
    parser.add_argument("--child", choices=["ipython1", "dask"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--mmap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    systems = [s.strip() for s in args.systems.split(",")]
    ipython1_python = os.environ.get("IPYTHON1_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    dask_python = peers_python() if "dask" in systems else ""
    directory = Path(tempfile.mkdtemp(prefix="bench-data-", dir=args.datadir))
    rows: list[dict[str, Any]] = []
    try:
        meta = dict(generate(directory, args.gib, args.files), engines=args.engines)
        print(f"generated {meta['bytes'] / 2**30:.2f} GiB in {meta['generate_s']:.1f} s",
              file=sys.stderr)
        runs = []
        if "ipython1" in systems:
            runs.append(("ipython1", ipython1_python, ["--mmap"]))
            if args.read:
                runs.append(("ipython1", ipython1_python, []))
        if "dask" in systems:
            runs.append(("dask", dask_python, []))
        for name, python, extra in runs * args.repeat:
            cmd = [python, __file__, "--child", name, "--dir", str(directory),
                   "--engines", str(args.engines), *extra]
            env = dict(os.environ, PYTHONPATH=str(REPO))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            try:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            except (IndexError, json.JSONDecodeError):
                rows.append({"system": name, "error": proc.stderr.strip()[-300:]})
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report = table(meta, rows)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "data.md").write_text(report + "\n")


if __name__ == "__main__":
    main()

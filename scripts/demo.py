#!/usr/bin/env python3
"""The main job: start a local 4-engine cluster, compute in parallel, stop it.

    python3 scripts/demo.py

Sets itself up on first run (.venv with ipython1 installed), then runs a
distributed NumPy computation with scatter/execute/gather and map, prints
the results next to a serial check, and always stops the cluster.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bootstrap  # noqa: E402

bootstrap.reexec_in_venv("test,mpi")  # one .venv serves both README commands

import numpy as np  # noqa: E402

from ipython1.client import blocking as client  # noqa: E402
from ipython1.scripts import ipcluster  # noqa: E402

N_ENGINES = 4


def main() -> int:
    # A private cluster directory, so the demo never touches a running cluster;
    # removed at the end (it holds the FURLs and logs of a cluster that is gone).
    if "IPYTHON1_DIR" in os.environ:
        return run_demo()
    with tempfile.TemporaryDirectory(prefix="ipython1-demo-") as root:
        os.environ["IPYTHON1_DIR"] = root
        return run_demo()


def run_demo() -> int:
    argv = ["--profile", "demo"]
    t0 = time.perf_counter()
    if ipcluster.main([*argv, "start", "-n", str(N_ENGINES), "--daemon"]) != 0:
        return 1
    try:
        mec = client.MultiEngineClient(profile="demo")
        print(f"engines: {mec.get_ids()} (up in {time.perf_counter() - t0:.1f} s)")
        print(mec.execute("import os, socket; print('engine pid', os.getpid())"))

        data = np.random.default_rng(42).standard_normal(4_000_000)
        mec.scatter("x", data)
        mec.execute("import numpy as np\n"
                    "local = (len(x), float(x.sum()), float((x * x).sum()), float(x.max()))")
        parts = mec.pull("local")
        n = sum(p[0] for p in parts)
        mean = sum(p[1] for p in parts) / n
        std = (sum(p[2] for p in parts) / n - mean**2) ** 0.5
        print(f"\ndistributed over {len(parts)} engines: n={n} mean={mean:.6f} std={std:.6f} "
              f"max={max(p[3] for p in parts):.6f}")
        print(f"serial check:                 n={data.size} mean={data.mean():.6f} "
              f"std={data.std():.6f} max={data.max():.6f}")

        mec.execute("y = np.sqrt(np.abs(x))")
        y = mec.gather("y")
        print(f"gathered y: shape {y.shape}, equal to serial: "
              f"{bool(np.allclose(y, np.sqrt(np.abs(data))))}")

        squares = mec.map(lambda k: k * k, range(16))
        print(f"map(k*k, range(16)) = {squares}")
        mec.close()
    finally:
        ipcluster.main([*argv, "stop"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

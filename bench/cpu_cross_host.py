"""Where the time goes across hosts: CPU per command of controller, engine and client.

    python bench/cpu_cross_host.py [--out FILE] [--engines N] [--commands-only]

Runs the same measurement twice with 8 engines: on one host (``ipcluster``,
the same-host shortcuts on) and across a grid of network-namespace hosts
(bench/grid.py: controller on ctl, engines on e1 and e2, this measurement's
client on cli). Per command (W1 ``execute("pass")`` on all 8 engines, W2 on
one engine, push and pull of 256 MiB to one engine) it records the wall time
(median) and the CPU (user + system, /proc) of the controller, of one engine
(the target; for W1 the mean over the 8) and of the client. Across hosts it
also measures raw links from cli to ctl, the limit of the veth + bridge path:
plain TCP and TLS (ipython1's data-channel contexts), one stream and two.
Prints, and writes to --out, one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import MIB, become_subreaper, cmdline, descendants, stop_my_descendants, wait_until
from grid import GridSpec

BENCH = Path(__file__).resolve().parent
ENGINES = int(os.environ.get("BENCH_CPU_ENGINES", "8"))  # --engines sets it for the children
SINK_PORT = 47017
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(cluster: Any, controller: int) -> dict[str, Any]:
    """Run each command on a started cluster; return wall and CPU per command."""
    import numpy as np

    mec = cluster.mec
    ids = mec.get_ids()
    engines = cluster.engine_pids()
    target, target_pid = ids[0], engines[0]
    arr = np.random.default_rng(0).random(256 * MIB // 8)

    def push() -> None:
        mec.push({"a": arr}, targets=target)

    def pull() -> None:
        mec.pull("a", targets=target)

    for _ in range(20):
        mec.execute("pass")
    out: dict[str, Any] = {}
    for name, call, reps, per_engine in [
            (f"W1 execute, N={ENGINES}", lambda: mec.execute("pass"), 300, True),
            ("W2 execute, one engine", lambda: mec.execute("pass", targets=target), 300, False),
            ("push 256 MiB", push, 5, False),
            ("pull 256 MiB", pull, 5, False)]:
        # Warm-up (and, for pull, the value to pull). Twice: the engine's namespace holds
        # the old value while a push's new one arrives, so the second push is the first to
        # need a second receive buffer, and fresh memory costs ~0.5 s per 256 MiB on this VM
        # (buffers.py); from then on the two take turns.
        call()
        call()
        pids = [controller, *(engines if per_engine else [target_pid])]
        before = [cpu_s(p) for p in pids]
        mine = os.times()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        after, mine_after = [cpu_s(p) for p in pids], os.times()
        used = [(b - a) / reps * 1e3 for a, b in zip(before, after, strict=True)]
        engine_ms = statistics.mean(used[1:])
        client_ms = ((mine_after.user + mine_after.system) - (mine.user + mine.system)) \
            / reps * 1e3
        out[name] = {"p50_ms": round(statistics.median(times) * 1e3, 3),
                     "controller_cpu_ms": round(used[0], 3),
                     "engine_cpu_ms": round(engine_ms, 3),
                     "client_cpu_ms": round(client_ms, 3), "reps": reps,
                     "local_channel": bool(getattr(mec, "local_channel", False)),
                     "transports": sorted({i.get("command_transport", "?")
                                           for i in mec.engine_info()})}
    return out


def send_streams(host: str, streams: int, tls: bool, size: int = 256 * MIB) -> float:
    """Send size bytes to the sink on host over parallel streams; return MB/s."""
    import threading

    from ipython1.kernel.datachannel import client_context

    payload = memoryview(bytearray(size // streams))
    port = SINK_PORT + 1 if tls else SINK_PORT
    conns = []
    for _ in range(streams):
        conn = socket.create_connection((host, port), timeout=60)
        conns.append(client_context().wrap_socket(conn) if tls else conn)

    def send(conn: socket.socket) -> None:
        conn.sendall(len(payload).to_bytes(8, "big"))
        for offset in range(0, len(payload), 4 * MIB):
            conn.sendall(payload[offset:offset + 4 * MIB])
        assert conn.recv(1) == b"k"
        conn.close()

    threads = [threading.Thread(target=send, args=(c,)) for c in conns]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return size / (time.perf_counter() - t0) / 1e6


def raw_links(host: str, reps: int = 5) -> dict[str, dict[str, float]]:
    """Plain TCP and TLS (ipython1's data-channel context), 1 and 2 streams; MB/s."""
    out = {}
    for tls in (False, True):
        for streams in (1, 2):
            speeds = [send_streams(host, streams, tls) for _ in range(reps)]
            out[f"{'tls' if tls else 'tcp'}_{streams}_stream{'s' if streams > 1 else ''}"] = {
                "best_mbps": round(max(speeds), 1),
                "median_mbps": round(statistics.median(speeds), 1)}
    return out


def sink() -> None:
    """Read every connection to its end and acknowledge; plain TCP and TLS, until killed."""
    import ssl
    import threading

    from ipython1.common.wire import ec_certificate_pem
    from ipython1.kernel.datachannel import server_context

    tls = server_context(ec_certificate_pem())

    def drain(conn: socket.socket) -> None:
        buf = memoryview(bytearray(4 * MIB))
        try:
            left = int.from_bytes(conn.recv(8), "big")  # the probe sends nothing: 0
            while left > 0:
                got = conn.recv_into(buf, min(left, len(buf)))
                if not got:
                    return
                left -= got
            conn.sendall(b"k")
        except (OSError, ssl.SSLError):  # the reachability probe hangs up at once
            pass
        finally:
            conn.close()

    def serve(listener: socket.socket, wrap: bool) -> None:
        while True:
            conn, _ = listener.accept()
            if wrap:
                try:
                    conn = tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()
                    continue
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    plain = socket.create_server(("", SINK_PORT))
    secure = socket.create_server(("", SINK_PORT + 1))
    threading.Thread(target=serve, args=(secure, True), daemon=True).start()
    serve(plain, False)


def client_side(grid_json: str | None) -> dict[str, Any]:
    """One measurement: a cluster (across the grid when given), then the commands."""
    sys.path.append(str(BENCH.parent))
    import sys_ipython1

    from ipython1.client import blocking as client

    become_subreaper()
    grid = GridSpec.from_json(grid_json)
    workdir = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    cluster = (sys_ipython1.GridCluster(ENGINES, workdir, client, grid) if grid
               else sys_ipython1.Cluster(ENGINES, workdir, client))
    try:
        cluster.start(120)
        controller = next(p for p in descendants(os.getpid()) if "ipcontroller" in cmdline(p))
        out = {"commands": measure(cluster, controller)}
        if grid and not os.environ.get("BENCH_CPU_COMMANDS_ONLY"):
            receiver = subprocess.Popen(grid.on(grid.ctl, [sys.executable, __file__, "sink"]))
            try:
                wait_until(lambda: _reachable(grid.ctl.address), 30, what="TCP sink on ctl")
                out["raw_cli_to_ctl"] = raw_links(grid.ctl.address)
            finally:
                receiver.terminate()
                receiver.wait(30)
        return out
    finally:
        cluster.stop()
        stop_my_descendants()
        shutil.rmtree(workdir, ignore_errors=True)


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, SINK_PORT), timeout=1).close()
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "client", "sink"))
    parser.add_argument("--grid", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--engines", type=int, default=None, help="engines (default 8)")
    parser.add_argument("--commands-only", action="store_true",
                        help="skip the raw TCP/TLS links between hosts")
    args = parser.parse_args()
    if args.engines:
        os.environ["BENCH_CPU_ENGINES"] = str(args.engines)
    if args.commands_only:
        os.environ["BENCH_CPU_COMMANDS_ONLY"] = "1"
    if args.mode == "sink":
        sink()
        return
    if args.mode == "client":
        print(json.dumps(client_side(args.grid)))
        return
    import grid as gridmod

    env = dict(os.environ, PYTHONPATH=str(BENCH.parent))
    me = [sys.executable, __file__, "client"]

    def run(argv: list[str]) -> dict[str, Any]:
        done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, timeout=600)
        if done.returncode:
            raise SystemExit(f"{argv[-1]}: exited with {done.returncode}")
        return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]

    doc = {"same_host": run(me)}
    hosts = gridmod.make_grid()
    try:
        described = gridmod.describe(hosts)
        doc["cross_host"] = run(GridSpec.on(GridSpec.from_json(described).hosts["cli"],
                                            [*me, "--grid", described]))
    finally:
        hosts.stop()
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

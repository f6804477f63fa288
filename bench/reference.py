"""Physical limits of this machine: loopback TCP and NumPy memcpy bandwidth.

Prints one JSON document, like the system modules, with system "reference".
With ``--grid`` (run.py --cross-host; this process on the cli host) it also
measures plain TCP from cli to ctl, the limit of the path between grid hosts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import subprocess
import sys
import time

import numpy as np
from common import MIB, Results, log, wait_until
from grid import GridSpec

SIZE = 256 * MIB
CHUNK = 4 * MIB
REPS = 5


def receive(listener: socket.socket, size: int) -> None:
    """Accept one connection, read size bytes, and acknowledge with one byte."""
    conn, _ = listener.accept()
    with conn:
        sink = memoryview(bytearray(CHUNK))
        received = 0
        while received < size:
            n = conn.recv_into(sink)
            if n == 0:
                break
            received += n
        conn.sendall(b"k" if received == size else b"x")


def loopback_once(payload: memoryview) -> float:
    """Send payload to another process over 127.0.0.1 TCP; return seconds until acknowledged."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    # A separate process, as between client and engine: no shared GIL.
    receiver = multiprocessing.get_context("fork").Process(
        target=receive, args=(listener, len(payload)))
    receiver.start()
    try:
        with socket.create_connection(("127.0.0.1", listener.getsockname()[1])) as sender:
            t0 = time.perf_counter()
            for offset in range(0, len(payload), CHUNK):
                sender.sendall(payload[offset:offset + CHUNK])
            ack = sender.recv(1)
            elapsed = time.perf_counter() - t0
    finally:
        receiver.join(60)
        if receiver.is_alive():
            receiver.kill()
        listener.close()
    if ack != b"k":
        raise RuntimeError("the receiver did not get every byte")
    return elapsed


def send_once(payload: memoryview, address: tuple[str, int]) -> float:
    """Send payload to a receiver at address; return seconds until acknowledged."""
    with socket.create_connection(address, timeout=60) as sender:
        t0 = time.perf_counter()
        for offset in range(0, len(payload), CHUNK):
            sender.sendall(payload[offset:offset + CHUNK])
        ack = sender.recv(1)
        elapsed = time.perf_counter() - t0
    if ack != b"k":
        raise RuntimeError("the receiver did not get every byte")
    return elapsed


def between_hosts(grid: GridSpec, payload: memoryview) -> float:
    """Best seconds to send payload from this host (cli) to a receiver on ctl."""
    port = 47018
    sink = subprocess.Popen(grid.on(grid.ctl, [sys.executable, __file__, "--sink", str(port)]))
    try:
        address = (grid.ctl.address, port)
        times: list[float] = []

        def first() -> bool:  # the receiver is up once a connection is accepted
            try:
                times.append(send_once(payload, address))
            except ConnectionRefusedError:
                return False
            return True

        wait_until(first, 30, what="receiver on ctl")
        times += [send_once(payload, address) for _ in range(REPS - 1)]
        return min(times)
    finally:
        sink.wait(60)


def serve(port: int) -> None:
    """Receive REPS transfers of SIZE bytes on port (the other end of between_hosts)."""
    listener = socket.create_server(("", port))
    for _ in range(REPS):
        receive(listener, SIZE)


def main() -> None:
    """Measure the limits, best of REPS, in MB/s (10**6 bytes per second)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grid", default=None, help="cross-host run: the grid hosts (JSON)")
    parser.add_argument("--sink", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        serve(args.sink)
        return
    grid = GridSpec.from_json(args.grid)
    results = Results("reference", f"python {sys.version.split()[0]}, numpy {np.__version__}",
                      "reference")
    src = np.ones(SIZE // 8)
    with results.guard("REF", "loopback_tcp"):
        payload = memoryview(src).cast("B")
        best = min(loopback_once(payload) for _ in range(REPS))
        results.add("REF", "loopback_tcp", "mbps", round(SIZE / best / 1e6, 1))
    if grid is not None:
        with results.guard("REF", "tcp_between_hosts"):
            best = between_hosts(grid, memoryview(src).cast("B"))
            results.add("REF", "tcp_between_hosts", "mbps", round(SIZE / best / 1e6, 1))
    with results.guard("REF", "numpy_memcpy"):
        dst = np.empty_like(src)
        np.copyto(dst, src)  # fault the pages in before timing
        times = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - t0)
        results.add("REF", "numpy_memcpy", "mbps", round(SIZE / min(times) / 1e6, 1))
    log("reference done")
    results.emit()


if __name__ == "__main__":
    main()

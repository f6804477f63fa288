"""Physical limits of this machine: loopback TCP and NumPy memcpy bandwidth.

Prints one JSON document, like the system modules, with system "reference".
"""

from __future__ import annotations

import multiprocessing
import socket
import sys
import time

import numpy as np
from common import MIB, Results, log

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


def main() -> None:
    """Measure both limits, best of REPS, in MB/s (10**6 bytes per second)."""
    results = Results("reference", f"python {sys.version.split()[0]}, numpy {np.__version__}",
                      "reference")
    src = np.ones(SIZE // 8)
    with results.guard("REF", "loopback_tcp"):
        payload = memoryview(src).cast("B")
        best = min(loopback_once(payload) for _ in range(REPS))
        results.add("REF", "loopback_tcp", "mbps", round(SIZE / best / 1e6, 1))
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

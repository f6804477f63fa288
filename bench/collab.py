"""What the collaboration event stream costs: round trip with 10 subscribers, event rate.

Run from the repository root in the project's venv::

    python bench/collab.py [--engines 2] [--subscribers 10] [--commands 500]

Starts a private cluster (IPYTHON1_DIR in a temporary directory), then

1. times ``execute("pass", targets=0)`` round trips with no subscriber, then with
   N subscriber processes (each a client subscribed to the event stream);
   reports the median and p90 of each and what the subscribers add;
2. measures the event rate one controller sustains: 20,000 chat events sent
   pipelined by one client, timed until every subscriber has received them all.

Prints a JSON summary on stdout. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def subscriber(furl: str) -> None:
    """Subscriber process: count events; print the count of chats when asked."""
    from ipython1.client.blocking import MultiEngineClient

    mec = MultiEngineClient(furl, timeout=60)
    chats = [0]
    lock = threading.Lock()

    def count(event: dict[str, Any]) -> None:
        if event["kind"] == "chat":
            with lock:
                chats[0] += 1

    mec.subscribe_events(count, history=0)
    print("ready", flush=True)
    for _ in sys.stdin:  # "count" -> prints the chats seen so far
        with lock:
            print(chats[0], flush=True)


def round_trips(mec: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        mec.execute("pass", targets=0)
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered) * 1000, 3),
            "p90_ms": round(ordered[int(len(ordered) * 0.9)] * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--subscriber", metavar="FURL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        return subscriber(args.subscriber)

    tmp = tempfile.mkdtemp(prefix="ipython1-collab-bench-")
    env = dict(os.environ, IPYTHON1_DIR=tmp,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    os.environ.update(IPYTHON1_DIR=tmp)
    ipcluster = [sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile", "bench"]
    procs: list[subprocess.Popen[str]] = []
    result: dict[str, Any] = {"engines": args.engines, "subscribers": args.subscribers}
    try:
        subprocess.run([*ipcluster, "start", "-n", str(args.engines), "--daemon"], env=env,
                       check=True, capture_output=True)
        furl = str(Path(tmp) / "cluster_bench" / "security" / "ipcontroller-mec.furl")
        from ipython1.client.blocking import MultiEngineClient

        mec = MultiEngineClient(furl, timeout=120)
        round_trips(mec, 50)  # warm up
        base = round_trips(mec, args.commands)
        for _ in range(args.subscribers):
            p = subprocess.Popen([sys.executable, __file__, "--subscriber", furl], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(p)
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        round_trips(mec, 50)
        loaded = round_trips(mec, args.commands)
        result["round_trip_no_subscribers"] = summary(base)
        result["round_trip_with_subscribers"] = summary(loaded)
        result["added_by_subscribers_ms"] = round(
            result["round_trip_with_subscribers"]["median_ms"]
            - result["round_trip_no_subscribers"]["median_ms"], 3)

        # Event rate: chat events pipelined from the reactor thread.
        from twisted.internet import defer

        def flood(n: int) -> Any:
            return defer.gatherResults([mec._async.say(f"event {i}") for i in range(n)])

        t0 = time.perf_counter()
        mec._loop.submit(flood, args.events).result(300)
        sent = time.perf_counter() - t0

        def counts() -> list[int]:
            out = []
            for p in procs:
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write("count\n")
                p.stdin.flush()
                out.append(int(p.stdout.readline()))
            return out

        deadline = time.monotonic() + 300
        while min(counts()) < args.events and time.monotonic() < deadline:
            time.sleep(0.05)
        received = time.perf_counter() - t0
        result["events"] = args.events
        result["events_per_s_published"] = round(args.events / sent)
        result["events_per_s_delivered_to_all"] = round(args.events / received)
        result["deliveries_per_s"] = round(args.events * len(procs) / received)
        mec.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run([*ipcluster, "stop", "--grace", "5"], env=env, capture_output=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

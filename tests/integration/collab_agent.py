"""A user of a shared cluster, as its own process (driven by test_collaboration).

python collab_agent.py subscribe FURL OUT   write each event (+ "recv" time) to OUT
python collab_agent.py execute FURL CODE    run CODE on all engines; print a JSON line
python collab_agent.py flood FURL N PATH    block engine 0 until PATH exists, queue N cells
python collab_agent.py many FURL N          run N cells on all engines, pipelined
"""

from __future__ import annotations

import json
import sys
import time

from ipython1.client.blocking import MultiEngineClient


def say(**kwargs: object) -> None:
    print(json.dumps(kwargs), flush=True)


def main() -> None:
    mode, furl, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    mec = MultiEngineClient(furl, timeout=120)
    if mode == "subscribe":
        out = open(arg, "a", buffering=1)

        def write(event: dict) -> None:
            out.write(json.dumps({"recv": time.time(), **event}) + "\n")

        mec.subscribe_events(write, history=0)
        say(ready=True, user=mec.user)
        sys.stdin.read()  # until the test closes our stdin
    elif mode == "execute":
        t0 = time.time()
        try:
            result = mec.execute(arg)
            say(t0=t0, t1=time.time(), ok=repr(result))
        except Exception as e:
            say(t0=t0, t1=time.time(), error=type(e).__name__, message=str(e))
    elif mode == "flood":
        release = sys.argv[4]
        blocker = mec.execute(
            "import os, time\nt = time.monotonic()\n"
            f"while not os.path.exists({release!r}) and time.monotonic() - t < 60:\n"
            "    time.sleep(0.01)", targets=0, block=False)
        pending = [mec.execute(f"n = {i}", targets=0, block=False) for i in range(int(arg))]
        say(submitted=len(pending))
        blocker.get_result()
        for p in pending:
            p.get_result()
        say(done=True)
    elif mode == "many":
        pending = [mec.execute(f"{mec.user}_n = {i}", block=False) for i in range(int(arg))]
        for p in pending:
            p.get_result()
        say(done=True)
    mec.close()


if __name__ == "__main__":
    main()

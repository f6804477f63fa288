"""A client that pipelines commands and then stops reading (issue 16, item 7).

usage: unread_agent.py FURL_FILE MODE N
  pulls: N blocking pulls of the engine's `blob` in flight at once, then SIGSTOP itself
  sleeps: N queued `time.sleep(0.2)` commands, then print "queued" and wait to be killed
"""

import os
import signal
import sys
import time

from ipython1.client.blocking import MultiEngineClient
from ipython1.client.reactor import ReactorThread

furl, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
mec = MultiEngineClient(furl, timeout=60)
code = "import time; time.sleep(0.2)" if mode == "sleeps" else None


def pipeline() -> None:
    for _ in range(n):
        d = (mec._async.execute(code, targets=0) if code
             else mec._async.pull("blob", targets=0))
        d.addErrback(lambda f: None)


ReactorThread.get().submit(pipeline).result(30)
print("queued", flush=True)
if mode == "pulls":
    time.sleep(0.5)  # the calls are on their way
    os.kill(os.getpid(), signal.SIGSTOP)  # ... and their replies are never read
time.sleep(3600)

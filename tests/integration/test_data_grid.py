"""Issue 21 across hosts: engines on two namespace hosts load, compute and reduce.

The controller runs on host ctl, two engines on each of e1 and e2, the client
on cli; the files sit on the shared filesystem. The reduction tree links
engines of different hosts, so partial results cross the grid engine to
engine.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from tests.conftest import ROOT, wait_until

CLIENT = """
import json, sys
import numpy as np
from ipython1.client.blocking import MultiEngineClient
mec = MultiEngineClient(sys.argv[1], timeout=120)
layout = mec.load_partitions("x", sys.argv[2] + "/*.npy", mmap=True)
x = mec.distarray("x")
mec.execute("import socket; host = socket.gethostname()")
hosts = mec.pull("host")
out = {"hosts": hosts, "layout": {str(e): [v["rows"].start, v["rows"].stop]
                                  for e, v in layout.items()},
       "sum": float(x.sum()), "std": float(x.std()), "argmax": x.argmax(),
       "hist": x.histogram(10, (-4.0, 4.0))[0].tolist(), "rows": x[95:105].tolist()}
mec.execute("host_list = [host]")
out["order"] = mec.reduce(lambda a, b: a + b, "host_list")
mec.allreduce(lambda a, b: a + b, "host_list", out="all_hosts")
out["all_hosts"] = mec.pull("all_hosts")
from ipython1.engine import reduction
out["addresses"] = mec.apply(reduction.own_address)
print(json.dumps(out))
"""


def test_engines_on_two_hosts_load_compute_and_reduce_among_themselves(host_grid, tmp_path):
    grid = host_grid
    rng = np.random.default_rng(5)
    arrays = [rng.normal(size=(50, 2)) for _ in range(6)]
    data = tmp_path / "data"
    data.mkdir()
    for i, a in enumerate(arrays):
        np.save(data / f"{i}.npy", a)
    full = np.concatenate(arrays)
    env = dict(os.environ, IPYTHON1_DIR=str(tmp_path / "ipython1"), IPYTHON1_NONINTERACTIVE="1",
               PYTHONPATH=str(ROOT))
    security = tmp_path / "ipython1" / "cluster_default" / "security"
    grid["ctl"].popen([sys.executable, "-m", "ipython1.scripts.ipcontroller", "--ip",
                       grid["ctl"].address], env=env)
    wait_until((security / "ipcontroller-engine.furl").exists, 60, "the controller's FURLs")
    for host in ("e1", "e2"):
        grid[host].popen([sys.executable, "-m", "ipython1.scripts.ipengine", "--fork", "2"],
                         env=env)
    check = ("import sys; from ipython1.client.blocking import MultiEngineClient as M; "
             "sys.exit(len(M(sys.argv[1]).get_ids()) != 4)")
    mec_furl = str(security / "ipcontroller-mec.furl")
    wait_until(lambda: grid["cli"].run([sys.executable, "-c", check, mec_furl],
                                       env=env, timeout=60).returncode == 0,
               90, "4 engines on e1 and e2")
    proc = grid["cli"].run([sys.executable, "-c", CLIENT, mec_furl, str(data)], env=env,
                           timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["hosts"]) == ["e1", "e1", "e2", "e2"]
    assert sorted(out["addresses"]) == sorted([grid["e1"].address] * 2 +
                                              [grid["e2"].address] * 2)
    assert np.isclose(out["sum"], full.sum()) and np.isclose(out["std"], full.std())
    assert out["argmax"] == full.argmax()
    assert out["hist"] == np.histogram(full, 10, (-4.0, 4.0))[0].tolist()
    np.testing.assert_array_equal(out["rows"], full[95:105])
    assert out["order"] == out["hosts"]
    assert out["all_hosts"] == [out["hosts"]] * 4

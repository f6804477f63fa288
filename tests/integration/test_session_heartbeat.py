"""Session logs saved and restored onto a fresh cluster; heartbeats while an
engine blocks; errors on dead engines. Real clusters over 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from ipython1.common.errors import InvalidEngineID, RemoteError, SessionFileError
from tests.conftest import Cluster, wait_until


def namespace(mec):
    """Every engine's user names and values, comparable."""
    out = []
    for e in mec.get_ids():
        names = mec.keys(targets=e)
        values = mec.pull(names, targets=e) if names else []
        out.append({k: (v.tolist() if isinstance(v, np.ndarray) else v)
                    for k, v in zip(names, values, strict=True)})
    return out


def test_save_and_restore_session_on_a_fresh_cluster(make_cluster, tmp_path):
    first = make_cluster(2).client(timeout=60)
    first.execute("import math\nbase = 10")
    first.push({"words": ["a", "b"], "arr": np.arange(5.0)})
    first.scatter("part", list(range(6)))
    first.execute("total = base + sum(part)\nroot = math.sqrt(total)", targets=[0])
    first.execute("%%writefile {}\nprint('hi')\n".format(tmp_path / "w.py"), targets=1)
    first.execute("ran = 'yes'\n!echo shell escape", targets=1)
    with pytest.raises(RemoteError, match="NameError"):
        first.execute("undefined_name + 1", targets=1)  # logged, with its error
    looping = first.execute("while True: pass", targets=0, block=False)
    wait_until(lambda: first.queue_status(0)[0]["running"], message="the loop running")
    first.interrupt(targets=0)
    with pytest.raises(RemoteError, match="KeyboardInterrupt"):
        looping.get_result(timeout=30)  # logged as interrupted: never replayed by default
    first.apply(lambda: None)  # logged, not replayable
    log = first.session_log()
    assert [e["op"] for e in log] == ["execute", "push", "push_each", "execute", "execute",
                                      "execute", "execute", "execute", "apply"]
    assert log[3]["targets"] == [0] and log[0]["targets"] == "all"
    assert log[6]["status"] == "error" and "NameError on engine 1" in log[6]["errors"][0]
    assert "client-" in log[0]["client"] and {e["client"] for e in log} == {log[0]["client"]}
    assert all(abs(e["time"] - time.time()) < 300 for e in log)

    path = tmp_path / "session.py"
    assert first.save_session(path) == 9
    text = path.read_text()
    assert "# failed: KeyboardInterrupt on engine 0\n# while True: pass\n" in text
    assert "# failed: NameError on engine 1\n# undefined_name + 1\n" in text
    assert "# targets: [0]\ntotal = base + sum(part)" in text
    assert "words = ['a', 'b']" in text  # literals are written as source
    assert "# targets: all\nimport math\nbase = 10" in text
    expected = namespace(first)

    second = make_cluster(2).client(timeout=60)
    reports = second.restore_session(path)  # returns: the loop is not replayed
    assert [r["status"] for r in reports] == (
        ["ok"] * 7 + ["skipped"] * 3)  # push_each makes one block per engine
    assert "failed when recorded: NameError" in reports[7]["error"]
    assert "KeyboardInterrupt" in reports[8]["error"]
    assert namespace(second) == expected
    assert second.pull("root", targets=0) == pytest.approx((10 + 0 + 1 + 2) ** 0.5)
    failed_only = tmp_path / "failed.py"
    failed_only.write_text("\n".join(text.splitlines()[:3] + [
        block for block in text.split("\n\n") if "# undefined_name" in block]))
    second.execute("undefined_name = 1", targets=1)
    again = second.restore_session(failed_only, include_failed=True)  # asked: replayed
    assert [r["status"] for r in again] == ["ok"]


def test_restoring_a_file_that_does_not_parse_runs_nothing(make_cluster, tmp_path):
    mec = make_cluster(1).client(timeout=60)
    bad_header = tmp_path / "a.py"
    bad_header.write_text("x = 1\n")
    bad_targets = tmp_path / "b.py"
    bad_targets.write_text("# ipython1 session log\n# ---- [1] execute\n# targets: [0, 'x']\n"
                           "x = 1\n")
    bad_code = tmp_path / "c.py"
    bad_code.write_text("# ipython1 session log\n# ---- [1] execute (ok)\n# targets: all\n"
                        "x = 1\n# ---- [2] execute (ok)\n# targets: all\ny = (\n")
    with pytest.raises(SessionFileError, match="not an ipython1 session file"):
        mec.restore_session(bad_header)
    with pytest.raises(SessionFileError, match=r"b.py:3: bad targets"):
        mec.restore_session(bad_targets)
    with pytest.raises(SessionFileError, match=r"c.py:7: the command does not parse"):
        mec.restore_session(bad_code)
    assert mec.keys() == [[]] and mec.session_log() == []  # nothing ran


def test_blocked_engine_keeps_its_connection_and_dead_engines_are_clear_errors(tmp_path):
    cluster = Cluster(tmp_path / "hb")
    # Short timeouts: a peer silent for 2 s is dropped.
    cluster.env["IPYTHON1_TUB_OPTIONS"] = json.dumps(
        {"keepaliveTimeout": 0.5, "disconnectTimeout": 2})
    try:
        cluster.start(2)
        mec = cluster.client(timeout=60)
        frozen = cluster.engine_pid(mec, 1)
        got = []
        mec.subscribe(lambda e, n, t: got.append(t))
        pending = mec.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(6)\n"
                              "'awake'", targets=0, block=False)
        wait_until(lambda: "sleeping\n" in got, 10, "live output from the sleeping engine")
        # A frozen process answers no heartbeat: the same settings drop it...
        os.kill(frozen, signal.SIGSTOP)
        wait_until(lambda: mec.get_ids() == [0], 15, "the frozen engine to be dropped")
        # ...while the engine blocked in time.sleep() stays connected.
        assert pending.get_result(timeout=30).output == "awake"
        assert mec.get_ids() == [0]
        assert mec.execute("'alive'", targets=0).output == "alive"
        with pytest.raises(InvalidEngineID, match="no engine with id 1"):
            mec.complete("x.", targets=1)
        assert mec.complete("pri", targets=0)["matches"] == ["print"]
    finally:
        try:
            os.kill(frozen, signal.SIGCONT)
        except (ProcessLookupError, NameError):
            pass
        cluster.stop()

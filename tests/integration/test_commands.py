"""ipcluster, ipcontroller/ipengine and the twistd plugins, run as real commands."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from tests.conftest import Cluster, kill_all, pid_alive, wait_until


def test_ipcluster_start_status_stop_leaves_nothing(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start(3)
        pids = list(cluster.pids)
        assert len(pids) == 4 and all(pid_alive(p) for p in pids)
        # start returned only once all engines registered
        mec = cluster.client()
        assert mec.get_ids() == [0, 1, 2]
        status = cluster.ipcluster("status")
        assert status.returncode == 0
        # --profile is also accepted after the subcommand
        after = subprocess.run(
            [sys.executable, "-m", "ipython1.scripts.ipcluster", "status", "--profile",
             cluster.profile], env=cluster.env, capture_output=True, text=True)
        assert after.returncode == 0 and "3 engine(s)" in after.stdout
        assert "3 engine(s)" in status.stdout
        for pid in pids[1:]:  # each engine's row shows its pid
            assert f" {pid} " in status.stdout
        again = cluster.ipcluster("start", "-n", "1", "--daemon")
        assert again.returncode == 1 and "already running" in again.stdout
        mec.close()
        stop = cluster.ipcluster("stop")
        assert stop.returncode == 0 and "stopped 4 process(es)" in stop.stdout
        assert not any(pid_alive(p) for p in pids)
        assert cluster.ipcluster("status").returncode == 1
    finally:
        cluster.stop()


def test_security_files_are_owner_only(make_cluster):
    cluster = make_cluster(1)
    security = cluster.dir.security
    assert stat.S_IMODE(security.stat().st_mode) == 0o700
    for name in ("ipcontroller-engine.furl", "ipcontroller-mec.furl", "ipcontroller.pem"):
        assert stat.S_IMODE((security / name).stat().st_mode) == 0o600, name
    furl = (security / "ipcontroller-mec.furl").read_text()
    assert furl.startswith("pb://") and "@tcp:127.0.0.1:" in furl  # loopback by default


def test_failed_start_reports_why_and_cleans_up(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        # 192.0.2.1 (TEST-NET-1) is not an address of this machine: listening fails.
        proc = cluster.ipcluster("start", "-n", "2", "--daemon", "--ip", "192.0.2.1",
                                 "--timeout", "30")
        assert proc.returncode == 1
        assert "could not start the cluster" in proc.stdout
        assert "the controller exited" in proc.stdout
        assert not cluster.dir.pid_file("ipcontroller").exists()
    finally:
        cluster.stop()


def test_twistd_plugins_run_controller_and_engine(tmp_path):
    env = Cluster(tmp_path).env
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    helps = subprocess.run(twistd + ["--help"], env=env, capture_output=True, text=True)
    assert "ipcontroller" in helps.stdout and "ipengine" in helps.stdout
    pids = []
    try:
        controller = subprocess.Popen(
            twistd + ["-n", "--pidfile", str(tmp_path / "c.pid"), "--logfile",
                      str(tmp_path / "c.log"), "ipcontroller", "--ip", "127.0.0.1",
                      "--profile", "svc"], env=env)
        pids.append(controller.pid)
        furl_file = tmp_path / "cluster_svc" / "security" / "ipcontroller-engine.furl"
        wait_until(furl_file.exists, 30, "the engine FURL file")
        engine = subprocess.Popen(
            twistd + ["-n", "--pidfile", str(tmp_path / "e.pid"), "--logfile",
                      str(tmp_path / "e.log"), "ipengine", "--furl-file", str(furl_file)],
            env=env)
        pids.append(engine.pid)
        from ipython1.client.blocking import MultiEngineClient

        mec = MultiEngineClient(str(furl_file.with_name("ipcontroller-mec.furl")), timeout=30)
        wait_until(lambda: mec.get_ids() == [0], 30, "the engine to register")
        result = mec.execute("import os; print(os.getpid())", targets=0)
        assert int(result.stdout) == engine.pid
        # Under twistd, user code runs on a shell thread: interrupt still works.
        pending = mec.execute("while True: pass", targets=0, block=False)
        wait_until(lambda: mec.queue_status(targets=0)[0]["running"], 10, "running")
        mec.interrupt(targets=0)
        try:
            pending.get_result(timeout=10)
        except Exception as e:
            assert "KeyboardInterrupt" in str(e)
        else:
            raise AssertionError("interrupted command did not fail")
        mec.close()
    finally:
        kill_all(pids)


def test_console_scripts_help():
    for module in ("ipcontroller", "ipengine"):
        out = subprocess.run([sys.executable, "-m", f"ipython1.scripts.{module}", "--help"],
                             capture_output=True, text=True, env=dict(os.environ))
        assert out.returncode == 0 and "--profile" in out.stdout
    out = subprocess.run([sys.executable, "-m", "ipython1.scripts.ipcluster", "--help"],
                         capture_output=True, text=True)
    assert "start" in out.stdout and "stop" in out.stdout and "status" in out.stdout

"""Seeing a running cluster: ipcluster status (text, --json, --watch) and the web dashboard.

The dashboard is checked in a real headless Chromium (Debian's chromium, driven
by Playwright): it lists the engines, and a command's event appears live.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Cluster, running_cluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("monitoring"), 2) as c:
        yield c


class _Output:
    """Collect a process's output without ever blocking on it."""

    def __init__(self, proc):
        self.proc = proc
        self.seen = b""
        os.set_blocking(proc.stdout.fileno(), False)

    def has(self, text):
        chunk = self.proc.stdout.read()
        if chunk:
            self.seen += chunk
        return text in self.seen

    def count(self, text):
        self.has(b"")
        return self.seen.count(text)


def _status_json(cluster):
    proc = cluster.ipcluster("status", "--json", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_status_shows_each_engine_busy_queued_tasks_and_users(cluster):
    mec = cluster.client()
    pids = mec.engine_info()
    engine_pids = {i["engine_id"]: i["pid"] for i in pids}
    pending = mec.execute("import time; time.sleep(6)", targets=0, block=False)
    queued = mec.execute("x = 1", targets=0, block=False)
    try:
        def busy():
            snap = _status_json(cluster)
            e0 = snap["engines"][0]
            return snap if e0["state"] == "busy" and e0["queued"] >= 1 else None

        snap = wait_until(busy, timeout=30)
        by_id = {e["id"]: e for e in snap["engines"]}
        assert set(by_id) == {0, 1}
        for engine_id, e in by_id.items():
            assert e["pid"] == engine_pids[engine_id]
            assert e["host"]
            assert e["rss"] > 10 * 2**20  # an IPython engine holds tens of MiB
            assert e["cpu"] is not None
        running = by_id[0]["running"]
        assert running["op"] == "execute" and "time.sleep(6)" in running["description"]
        assert running["elapsed"] >= 0
        assert by_id[1]["state"] == "idle" and by_id[1]["running"] is None
        assert snap["tasks"] == {**snap["tasks"], "queued": 0, "running": 0}
        owner = snap["users"][0]
        assert owner["kind"] == "owner" and owner["clients"], owner
        assert any(c.get("pid") for c in owner["clients"])

        text = cluster.ipcluster("status", timeout=60).stdout
        assert "2 engine(s)" in text
        for pid in engine_pids.values():
            assert f" {pid} " in text
        assert "time.sleep(6)" in text and "tasks:" in text and "[owner]" in text
    finally:
        mec.interrupt(targets=0)
        for p in (pending, queued):
            try:
                p.get_result(block=True)
            except Exception:
                pass


def test_status_counts_tasks(cluster):
    from ipython1.client.blocking import StringTask, TaskClient

    tc = TaskClient(cluster.task_furl)
    try:
        ok = [tc.run(StringTask("y = 1")) for _ in range(3)]
        bad = tc.run(StringTask("1/0"))
        for tid in [*ok, bad]:
            try:
                tc.get_task_result(tid, block=True)
            except Exception:
                pass
        tasks = _status_json(cluster)["tasks"]
        assert tasks["done"] >= 3 and tasks["failed"] >= 1
    finally:
        tc.close()


def test_status_watch_refreshes_in_place(cluster):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile", cluster.profile,
         "status", "--watch", "--interval", "0.3"],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = _Output(proc)
        wait_until(lambda: out.count(b"\x1b[H\x1b[2J") >= 2 and out.count(b"2 engine(s)") >= 2,
                   timeout=30)
    finally:
        proc.kill()
        proc.wait()


def _get(url, data=None):
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_dashboard_url_token_and_roles(cluster):
    proc = cluster.ipcluster("dashboard")
    assert proc.returncode == 0, proc.stdout
    url = proc.stdout.strip()
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    base, token = url.split("?token=")
    code, snap = _get(f"{base}api/status?token={token}")
    assert code == 200 and [e["id"] for e in snap["engines"]] == [0, 1]
    assert snap["access"]["kind"] == "owner"
    # No token, a wrong token: refused, and nothing about the cluster is told.
    for bad in ("", "0" * 40, token[:-1] + ("0" if token[-1] != "0" else "1")):
        code, body = _get(f"{base}api/status?token={bad}")
        assert code == 403 and "engines" not in body
    # An observer's token reads but may not act; the owner's may.
    added = cluster.ipcluster("adduser", "watcher", "--observer")
    assert added.returncode == 0, added.stdout
    observer_furl = added.stdout.strip()
    obs = cluster.ipcluster("dashboard", "--furl-file", observer_furl).stdout.strip()
    obs_token = obs.split("?token=")[1]
    code, snap = _get(f"{base}api/status?token={obs_token}")
    assert code == 200 and snap["access"] == {"user": "watcher", "kind": "observer"}
    code, body = _get(f"{base}api/interrupt?token={obs_token}", b'{"engine": 0}')
    assert code == 403 and "read-only" in body["error"]
    code, body = _get(f"{base}api/interrupt?token={token}", b'{"engine": 0}')
    assert code == 200 and body["ok"] is True
    # Removing the user takes the token with it.
    assert cluster.ipcluster("deluser", "watcher").returncode == 0
    code, _ = _get(f"{base}api/status?token={obs_token}")
    assert code == 403


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_dashboard_in_a_real_browser(cluster, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    url = cluster.ipcluster("dashboard").stdout.strip()
    mec = cluster.client()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(url)
            page.wait_for_selector("#engine-rows tr[data-engine='1']", timeout=20_000)
            rows = page.locator("#engine-rows tr")
            assert rows.count() == 2
            first = rows.nth(0).inner_text()
            assert "idle" in first or "busy" in first
            page.wait_for_selector("#live.on", timeout=20_000)
            page.click("nav button[data-tab='events']")
            marker = f"dashboard_marker_{int(time.time())}"
            mec.execute(f"print('{marker}')", targets=1)
            page.wait_for_function(
                "m => [...document.querySelectorAll('#event-list li')]"
                ".some(li => li.textContent.includes(m))", arg=marker, timeout=20_000)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not failed, failed
            # Nothing is fetched from anywhere but the controller.
            host = url.split("/")[2]
            requested = []
            page.on("request", lambda r: requested.append(r.url))
            page.reload()
            page.wait_for_selector("#engine-rows tr[data-engine='1']", timeout=20_000)
            assert requested and all(u.split("/")[2] == host for u in requested), requested
        finally:
            browser.close()
    shutil.copy(shot, "/tmp/ipython1-dashboard.png") if Path("/tmp").is_dir() else None


def _engine_with(cluster, patch):
    """Start an engine process whose ipython1 reports patched versions."""
    code = ("import ipython1.common.versions as v; real = v.local_versions; "
            f"v.local_versions = lambda: dict(real(), **{patch!r}); "
            "from ipython1.scripts.ipengine import main; "
            f"main(['--profile', {cluster.profile!r}, '--connect-timeout', '20'])")
    proc = subprocess.Popen([sys.executable, "-c", code], env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cluster.pids.append(proc.pid)
    return proc


def test_version_skew_is_named_at_connect(cluster):
    # Another wire protocol: the engine is refused at once, told both versions, and exits.
    proc = _engine_with(cluster, {"protocol": 99, "ipython1": "9.9"})
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0
    from ipython1.common.versions import PROTOCOL

    assert "protocol 99" in out and "ipython1 9.9" in out and f"protocol {PROTOCOL}" in out, out
    # Another Python minor version: the engine joins; a client is warned, naming both.
    skewed = _engine_with(cluster, {"python": "3.9.0"})
    try:
        mec = cluster.client()
        wait_until(lambda: len(mec.get_ids()) == 3, timeout=60)
        with pytest.warns(RuntimeWarning) as caught:
            other = cluster.client()
        messages = [str(w.message) for w in caught]
        assert any("3.9.0" in m and "engine(s) 2" in m and sys.version.split()[0] in m
                   for m in messages), messages
        other.close()
        log = cluster.dir.log_file("ipcontroller").read_text()
        assert "3.9.0" in log
    finally:
        skewed.kill()
        skewed.wait()
        wait_until(lambda: len(mec.get_ids()) == 2, timeout=30)


def test_a_client_of_another_protocol_is_refused_by_name(cluster):
    code = ("import ipython1.common.versions as v; real = v.local_versions; "
            "v.local_versions = lambda: dict(real(), protocol=99); "
            "from ipython1.client.blocking import MultiEngineClient; "
            f"MultiEngineClient({cluster.mec_furl!r}).get_ids()")
    proc = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "VersionMismatch" in proc.stderr and "protocol 99" in proc.stderr, proc.stderr


def test_logs_of_an_engine_and_of_the_controller(cluster):
    mec = cluster.client()
    lines = mec.logs(1, lines=200)
    assert any("registered with the controller as engine 1" in line for line in lines), lines
    both = mec.logs([0, 1], lines=5)
    assert len(both) == 2 and all(0 < len(x) <= 5 for x in both)
    proc = cluster.ipcluster("logs", "--engine", "0", "-n", "200")
    assert proc.returncode == 0 and "as engine 0" in proc.stdout
    # --follow prints what is logged after it started.
    follow = subprocess.Popen(
        [sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile", cluster.profile,
         "logs", "--follow", "-n", "1"], env=cluster.env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        out = _Output(follow)
        wait_until(lambda: out.has(b"\n"), timeout=30)  # the last line, then it follows
        first = len(out.seen)
        assert out.seen.count(b"\n") == 1  # -n 1: one line of the past
        extra = cluster.start_engine()
        wait_until(lambda: out.has(f"'pid': {extra.pid}".encode()), timeout=60)
        assert out.seen[first:].count(b"registered: ") == 1  # new lines only, not old ones
        extra.kill()
        extra.wait()
    finally:
        follow.kill()
        follow.wait()
    wait_until(lambda: len(mec.get_ids()) == 2, timeout=30)


def test_doctor_passes_a_healthy_cluster_and_names_each_problem(cluster, tmp_path):
    ok = cluster.ipcluster("doctor", timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "engine(s) 0, 1: Python" in ok.stdout and "FAIL" not in ok.stdout
    assert "answers from here" in ok.stdout
    assert "data relay port" in ok.stdout and "cloudpickle" in ok.stdout
    # A FURL file others can read: a failure, with the command that fixes it.
    furl = cluster.dir.security / "ipcontroller-mec.furl"
    furl.chmod(0o644)
    try:
        bad = cluster.ipcluster("doctor", "--json", timeout=120)
    finally:
        furl.chmod(0o600)
    assert bad.returncode == 1
    findings = json.loads(bad.stdout)
    assert any(f["level"] == "fail" and "can be read by others" in f["what"]
               and f"chmod 600 {furl}" in f["advice"] for f in findings), findings
    # A profile whose controller is gone: says so and what to do.
    from ipython1.common.clusterdir import ClusterDir

    ghost = Cluster(tmp_path)
    ghost.dir.create()
    gone = ghost.ipcluster("doctor", timeout=60)
    assert gone.returncode == 1 and "ipcluster start" in gone.stdout
    assert isinstance(ghost.dir, ClusterDir)

"""Issue 16's attacks on a shared cluster, re-run: each one must fail now.

One 2-engine cluster (users alice, full, and carol, observer) serves the
module; the attacks that need a cluster of their own (a planted module in
the start directory, stale pid files) make one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipython1.common.errors import ControllerNotFound, KernelError, PermissionDenied
from tests.conftest import ROOT, Cluster, pid_alive, wait_until

VENV_BIN = Path(sys.executable).parent
UNREAD_MB = 16  # the controller holds a client with more unread replies than this
UNREAD_AGENT = str(Path(__file__).with_name("unread_agent.py"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, str]]]:
    cluster = Cluster(tmp_path_factory.mktemp("security"))
    cluster.env["IPYTHON1_UNREAD_REPLY_MB"] = str(UNREAD_MB)
    try:
        cluster.start(2)
        furls = {}
        for name, extra in (("alice", ()), ("carol", ("--observer",))):
            proc = cluster.ipcluster("adduser", name, *extra)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            furls[name] = proc.stdout.strip()
        yield cluster, furls
    finally:
        cluster.stop()


def user_client(cluster: Cluster, furl: str) -> object:
    from ipython1.client.blocking import MultiEngineClient

    mec = MultiEngineClient(furl, timeout=30)
    cluster.clients.append(mec)
    return mec


# -- 1. observers ------------------------------------------------------------------------


def test_observer_cannot_read_the_session_log_but_still_watches(shared) -> None:
    cluster, furls = shared
    owner = cluster.client(timeout=30)
    owner.push({"owners_secret": "s3cr3t"})
    owner.execute("print('visible output')")
    carol = user_client(cluster, furls["carol"])
    with pytest.raises(PermissionDenied, match="'carol' is an observer.*session_log"):
        carol.session_log()
    with pytest.raises(PermissionDenied):
        carol.save_session(str(cluster.root / "stolen.py"))
    assert not (cluster.root / "stolen.py").exists()
    # Watching stays allowed: the event stream, with output.
    owner.execute("print('seen by carol')")
    seen = [e for e in carol.events(timeout=5) if e["kind"] == "stdout"
            and "seen by carol" in e["data"].get("text", "")]
    assert seen
    assert any(e["op"] == "push" for e in owner.session_log())  # the owner still may


# -- 2. removed users, stopping the controller ------------------------------------------


def test_full_user_cannot_stop_the_controller(shared) -> None:
    cluster, furls = shared
    alice = user_client(cluster, furls["alice"])
    with pytest.raises(PermissionDenied, match="may not stop the controller"):
        alice.kill(controller=True, targets=[])
    assert pid_alive(cluster.dir.path and int(
        cluster.dir.pid_file("ipcontroller").read_text().split()[0]))
    assert alice.get_ids() == [0, 1]


def test_deluser_rotates_every_furl_engine_code_could_read(shared) -> None:
    from ipython1.client.blocking import MultiEngineClient

    cluster, furls = shared
    alice = user_client(cluster, furls["alice"])
    mallory_file = cluster.ipcluster("adduser", "mallory").stdout.strip()
    mallory = user_client(cluster, mallory_file)
    # Mallory runs code as the engines' account: every FURL file is readable there.
    stolen = mallory.execute(
        "import glob; stolen = {p: open(p).read().strip() for p in "
        f"glob.glob({str(cluster.dir.security)!r} + '/**/*.furl', recursive=True)}}",
        targets=0)
    assert stolen
    stolen = mallory.pull("stolen", targets=0)
    assert any(p.endswith("ipcontroller-admin.furl") for p in stolen)
    assert any(p.endswith("alice.furl") for p in stolen)
    done = cluster.ipcluster("deluser", "mallory")
    assert done.returncode == 0, done.stdout
    assert "give alice their new FURL file" in done.stdout
    for path, furl in stolen.items():
        if path.endswith("mallory.furl"):
            continue
        assert Path(path).read_text().strip() != furl, path
        with pytest.raises(ControllerNotFound):
            MultiEngineClient(furl, connect_timeout=2)
    # The admin FURL Mallory kept cannot add her back.
    from ipython1.controller.userdir import admin_call

    admin_furl = next(f for p, f in stolen.items() if p.endswith("ipcontroller-admin.furl"))
    with pytest.raises(KernelError):
        _call_admin_furl(admin_furl)
    assert admin_call is not None
    # Alice's session goes on; `ipcluster users` says she needs her new file ...
    assert alice.get_ids() == [0, 1]
    listing = cluster.ipcluster("users").stdout
    assert any(line.startswith("alice") and "needed" in line for line in listing.splitlines())
    # ... until she connects with it; the owner's files were rewritten in place.
    user_client(cluster, furls["alice"]).get_ids()
    listing = cluster.ipcluster("users").stdout
    assert not any(line.startswith("alice") and "needed" in line
                   for line in listing.splitlines())
    assert cluster.client(timeout=30).get_ids() == [0, 1]


def _call_admin_furl(furl: str) -> None:
    """Use a FURL as the admin capability (blocking); raise what the connection raised."""
    from ipython1.client.reactor import ReactorThread, _wait
    from ipython1.common import wire

    def call() -> object:
        tub = wire.client_tub()
        d = wire.get_reference(tub, furl, 3)
        d.addCallback(lambda ref: ref.callRemote("add_user", "mallory", False))
        return d.addBoth(lambda r: (tub.stopService(), r)[1])

    _wait(ReactorThread.get().submit(call), 10)


# -- 3. code from the start directory ---------------------------------------------------------


OTHER_UID = 64016  # a throwaway account: setpriv needs no passwd entry, nothing to clean up
OTHER_ACCOUNT = """
import json, os, socket, sys
out = {}
for path in sys.argv[1:-2]:
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
        out[path] = "read"
    except PermissionError:
        out[path] = "denied"
for name in sys.argv[-2:]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect("\\0" + name[1:])
        s.sendall(b"\\0\\0\\0\\x0bhello world" + os.urandom(64))
        data = s.recv(200)
        out[name] = "hung up" if not data or data[:1] == b"E" else "answered %r" % data
    except OSError as e:
        out[name] = "hung up (%s)" % e
print(json.dumps(out))
"""


def test_controller_and_engines_never_import_from_the_start_directory(tmp_path: Path) -> None:
    planted = tmp_path / "shared-dir"
    planted.mkdir()
    marker = tmp_path / "pwned"
    for module in ("getpass", "secrets", "json", "cloudpickle", "msgpack"):
        (planted / f"{module}.py").write_text(
            f"open({str(marker)!r}, 'a').write({module!r} + '\\n')\n"
            f"raise SystemExit('planted {module} imported')\n")
    import tempfile

    # Under /tmp, not pytest's private directory: another account must be able to try.
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="ipython1-security-")))
    cluster.env["PYTHONPATH"] = str(ROOT)  # no empty entry: that would name the cwd
    try:
        proc = subprocess.run([str(VENV_BIN / "ipcluster"), "--profile", cluster.profile,
                               "start", "-n", "1", "--daemon"], cwd=planted, env=cluster.env,
                              capture_output=True, text=True, timeout=120)
        cluster.record_pids()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        mec = cluster.client(timeout=30)
        mec.execute("import getpass, secrets, json")
        assert mec.execute("import os; cwd = os.getcwd()")
        assert mec.pull("cwd", targets=0) == str(planted)  # it did start there
        assert not marker.exists(), marker.read_text()
        if os.geteuid() == 0:
            another_local_account_reaches_nothing(cluster, mec)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def another_local_account_reaches_nothing(cluster: Cluster, mec: object) -> None:
    """Run as another uid: no file of the cluster directory, no same-host socket."""
    from tests.integration.test_listeners import listening

    os.chmod(cluster.root, 0o711)  # let it reach our cluster directory (under /tmp)
    controller = int(cluster.dir.pid_file("ipcontroller").read_text().split()[0])
    command_channel = listening(controller)[1][0]
    data_socket = mec.engine_info()[0]["local_data"]["socket"]
    paths = [cluster.dir.path, cluster.dir.security, cluster.dir.log, cluster.mec_furl,
             cluster.dir.log_file("ipcontroller"), cluster.dir.log / "transcript.jsonl"]
    proc = subprocess.run(
        ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
         "/usr/bin/python3", "-I", "-c", OTHER_ACCOUNT, *map(str, paths), command_channel,
         data_socket], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    import json

    seen = json.loads(proc.stdout)
    print("another local account:", seen)
    assert {seen[str(p)] for p in paths} == {"denied"}, seen
    assert seen[command_channel].startswith("hung up"), seen
    assert seen[data_socket].startswith("hung up"), seen
    assert mec.execute("1") and mec.local_channel  # the owner's channel still works


# -- 5. a stalled subscriber ------------------------------------------------------------------


def subscribe_and_never_acknowledge(furl_file: str) -> object:
    """Subscribe to everyone's live output and never answer; return the Tub (to stop)."""
    from foolscap.api import Referenceable
    from twisted.internet.defer import Deferred

    from ipython1.client.connect import _open_session
    from ipython1.client.reactor import ReactorThread, _wait
    from ipython1.common import wire

    class Stalled(Referenceable):
        def remote_output(self, data: object) -> Deferred:
            return Deferred()  # never fires: the acknowledgement never comes

    def subscribe() -> object:
        d = _open_session(wire.resolve_furl(furl_file), 10)
        d.addCallback(lambda opened: opened[2].callRemote(
            "subscribe_output", Stalled(), False).addCallback(lambda _: opened[0]))
        return d

    return _wait(ReactorThread.get().submit(subscribe), 20)


def test_a_stalled_output_subscriber_slows_no_command(shared) -> None:
    from ipython1.client.reactor import ReactorThread

    cluster, furls = shared
    owner = cluster.client(timeout=60)
    tub = subscribe_and_never_acknowledge(furls["carol"])
    try:
        owner.execute("print('warm up')", targets=0)
        t0 = time.monotonic()
        for i in range(5):
            owner.execute(f"print('line', {i})", targets=0)
        elapsed = time.monotonic() - t0
        print(f"5 printing commands with a stalled subscriber: {elapsed:.2f} s")
        # Was OUTPUT_ACK_TIMEOUT (2 s) added to each printing command.
        assert elapsed < 2.0, f"5 printing commands took {elapsed:.2f} s"
    finally:
        ReactorThread.get().submit(tub.stopService)


# -- 7. unread replies, dead clients ------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_agent(cluster: Cluster, furl: str, *args: str,
                transport: str = "channel") -> subprocess.Popen[str]:
    env = dict(cluster.env, IPYTHON1_COMMAND_CHANNEL="0" if transport == "foolscap" else "1")
    proc = subprocess.Popen([sys.executable, UNREAD_AGENT, furl, *args],
                            env=env, text=True, stdout=subprocess.PIPE)
    cluster.pids.append(proc.pid)
    assert proc.stdout.readline().strip() == "queued"
    return proc


@pytest.mark.parametrize("transport", ["channel", "foolscap"])
def test_a_client_that_never_reads_its_replies_is_held_not_buffered(shared,
                                                                    transport: str) -> None:
    cluster, furls = shared
    owner = cluster.client(timeout=60)
    owner.execute("blob = 'x' * 200_000", targets=0)  # under the data channel threshold
    controller = int(cluster.dir.pid_file("ipcontroller").read_text().split()[0])
    before = rss_mb(controller)
    # 1,500 pulls of 200 kB: 300 MB of replies if they all ran.
    attacker = start_agent(cluster, furls["alice"], "pulls", "1500", transport=transport)
    try:
        wait_until(lambda: any(q["per_user"] for q in owner.queue_status(targets=0)) or
                   rss_mb(controller) - before > 3 * UNREAD_MB, 30, "the pipelined pulls")
        time.sleep(4)  # let it run what it would run (unbounded, 98 MB in 2 s)
        grown = rss_mb(controller) - before
        # The owner is not stuck behind the held client's commands.
        t0 = time.monotonic()
        assert owner.execute("1 + 1", targets=0).output_repr == "2"
        assert time.monotonic() - t0 < 3
        waiting = sum(q["per_user"].get("alice", 0) for q in owner.queue_status(targets=0))
        assert waiting > 100  # held, not run
        print(f"controller grew {grown:.0f} MB under the unread-replies attack")
        assert grown < 80, f"controller grew {grown:.0f} MB"
    finally:
        attacker.kill()
        attacker.wait()
    # Gone: its queued commands are dropped, and memory comes back down.
    wait_until(lambda: not any(q["queued"] for q in owner.queue_status(targets=0)), 10,
               "the dead client's commands to be dropped")


def test_a_dead_clients_queued_commands_are_dropped(shared) -> None:
    cluster, furls = shared
    owner = cluster.client(timeout=60)
    # 40 s of work queued on engine 0, then the client dies.
    victim = start_agent(cluster, furls["alice"], "sleeps", "200")
    wait_until(lambda: sum(len(q["queued"]) for q in owner.queue_status(targets=0)) > 150, 20,
               "the client's commands to be queued")
    victim.kill()
    victim.wait()
    t0 = time.monotonic()
    wait_until(lambda: not any(q["queued"] for q in owner.queue_status(targets=0)), 10,
               "the dead client's queued commands to be dropped")
    owner.execute("pass", targets=0)
    print(f"owner's command after the client died: {time.monotonic() - t0:.2f} s")
    assert time.monotonic() - t0 < 3  # was 40 s behind the dead client's commands


# -- 8. files and logs --------------------------------------------------------------------------


def test_every_file_in_the_cluster_directory_is_owner_only(shared) -> None:
    cluster, _ = shared
    cluster.client(timeout=30).execute("print('user output lands in the logs')")
    checked = 0
    for root, _dirs, files in os.walk(cluster.dir.path):
        assert os.stat(root).st_mode & 0o777 == 0o700, root
        for name in files:
            path = os.path.join(root, name)
            assert os.stat(path).st_mode & 0o777 == 0o600, path
            checked += 1
    assert checked >= 8  # FURLs, certificate, pid files, logs, transcript


# -- 9. stale pid files --------------------------------------------------------------------------


def test_stop_and_status_never_signal_a_stranger_in_a_stale_pid_file(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.dir.create()
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        cluster.dir.pid_file("ipcontroller").write_text(f"{stranger.pid}\n")
        cluster.dir.pid_file("ipengines").write_text(
            f"{stranger.pid}\n# ipython1 pid file v2\n"
            f'{{"pid": {stranger.pid}, "start": 1, "cmdline": "python -m ipython1"}}\n')
        status = cluster.ipcluster("status")
        assert "Traceback" not in status.stdout + status.stderr
        assert "stale pid file" in status.stdout and "no controller is running" in status.stdout
        cluster.dir.pid_file("ipcontroller").write_text(f"{stranger.pid}\n")
        stop = cluster.ipcluster("stop", "--grace", "1")
        assert stop.returncode == 0 and "stale pid file" in stop.stdout
        assert stranger.poll() is None  # never signalled
        assert not cluster.dir.pid_file("ipcontroller").exists()
        assert not cluster.dir.pid_file("ipengines").exists()
    finally:
        stranger.kill()
        stranger.wait()


# -- 10. a relayed push to an engine that dies ---------------------------------------------------


def test_relayed_push_to_an_engine_that_dies_fails_at_once(shared, monkeypatch) -> None:
    import numpy as np

    cluster, _ = shared
    owner = cluster.client(timeout=60)
    cluster.start_engine()
    wait_until(lambda: len(owner.get_ids()) == 3, 60, "a third engine")
    victim = max(owner.get_ids())
    pid = cluster.engine_pid(owner, victim)
    # Busy worker threads: the engine's end of the transfer never reaches the relay,
    # so the client waits there for a peer that will not come.
    owner.execute("from twisted.internet import reactor, threads; import time\n"
                  "reactor.callFromThread(lambda: [threads.deferToThread(time.sleep, 300) "
                  "for _ in range(64)])", targets=victim)
    monkeypatch.setenv("IPYTHON1_LOCAL_DATA", "0")  # through the relay:
    monkeypatch.setenv("IPYTHON1_DIRECT_DATA", "0")  # not the engine's own data port
    killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KernelError):  # TransferError, or EngineError
            owner.push({"big": np.ones(2**20)}, targets=victim)
    finally:
        killer.cancel()
    print(f"relayed push to a dying engine failed after {time.monotonic() - t0:.2f} s")
    assert time.monotonic() - t0 < 5.0  # was PAIR_TIMEOUT, 30 s
    assert owner.get_ids() == [0, 1]


# -- 11. misuse ---------------------------------------------------------------------------------


def test_engine_furl_as_client_furl_is_a_clear_error(shared) -> None:
    from ipython1.client.blocking import MultiEngineClient

    cluster, _ = shared
    with pytest.raises(KernelError, match="engine FURL.*not a client's"):
        MultiEngineClient(str(cluster.dir.furl_file("ipcontroller-engine.furl")), timeout=10)

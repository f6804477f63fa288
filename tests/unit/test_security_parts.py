"""Issue 16's pure parts: listener guard, reply backpressure, pid files, safe spawning."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from ipython1.common import processes
from ipython1.common.listenguard import ListenerGuard
from ipython1.controller.backpressure import ReplyBackpressure


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_guard_caps_unauthenticated_connections_and_reports_a_flood_once_per_window() -> None:
    clock, said = FakeClock(), []
    guard = ListenerGuard("relay", max_pending=2, deadline=1.0, log_every=10, clock=clock,
                          emit=said.append)
    assert guard.admit() and guard.admit()
    assert not guard.admit() and not guard.admit()  # full: refused
    assert len(said) == 1 and "relay: possible connection flood: 1 connection(s) refused" \
        in said[0]
    guard.release()
    assert guard.admit()  # a slot came back
    clock.now = 11
    assert not guard.admit()
    assert len(said) == 2 and "2 connection(s) refused" in said[1]  # the held-back one too
    guard.close()


class _Listener:
    def __init__(self, errors: list[int]) -> None:
        self.errors = errors
        self.accepted = 0

    def accept(self) -> tuple[object, object]:
        if self.errors:
            raise OSError(self.errors.pop(0), os.strerror(errno.EMFILE))
        self.accepted += 1

        class Sock:
            def close(self) -> None:
                pass

        return Sock(), None


def test_guard_survives_emfile_and_sheds_the_waiting_connection() -> None:
    said: list[str] = []
    guard = ListenerGuard("data", emit=said.append)
    listener = _Listener([errno.EMFILE])
    assert guard.accept(listener) is None  # failed, not raised: the loop goes on
    assert listener.accepted == 1  # shed with the reserved descriptor
    assert guard.accept(listener) is not None
    assert "Too many open files" in said[0]
    with pytest.raises(OSError):
        guard.accept(_Listener([errno.EBADF]))  # the listener itself is gone
    guard.close()


class FakeTransport:
    """A socket transport's buffer, as Twisted's FileDescriptor keeps it."""

    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.reading = True
        self.connected = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_a_client_that_does_not_read_is_held_then_released_in_order() -> None:
    held: set[str] = set()
    kicks: list[int] = []
    stored = [0]
    transport, idle = FakeTransport(), FakeTransport()
    clock = Clock()
    bp = ReplyBackpressure("alice/client-1", held, lambda: kicks.append(1),
                           lambda: [transport, idle], lambda: stored[0], high=100, clock=clock)
    transport._tempDataLen = 150  # replies it has not read
    bp.check()
    assert "alice/client-1" in held and not transport.reading
    assert idle.reading  # nothing to send there: still read, so its end is noticed
    stored[0] = 40
    transport._tempDataLen = 20
    clock.advance(0.1)  # still over low (50): held
    assert bp.held
    stored[0] = 0
    clock.advance(0.1)
    assert not bp.held and transport.reading and kicks == [1]
    bp.close()


def test_pid_files_recognise_their_process_and_call_a_reused_pid_stale(tmp_path: Path) -> None:
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        path = tmp_path / "x.pid"
        processes.write_pid_file(path, [ours.pid])
        assert path.read_text().split()[0] == str(ours.pid)  # old readers still work
        assert processes.check(path).live == [ours.pid]
        # The recorded process is gone and its pid now names another process.
        record = processes.recorded(path)[0]
        assert isinstance(record, processes.Identity)
        fake = processes.Identity(stranger.pid, record.start, record.cmdline)
        path.write_text(f"{stranger.pid}\n# ipython1 pid file v2\n"
                        f'{{"pid": {stranger.pid}, "start": {fake.start}, '
                        f'"cmdline": "{fake.cmdline}"}}\n')
        status = processes.check(path)
        assert status.is_stale and "is now another process" in status.stale[0]
        path.write_text(f"{stranger.pid}\n")  # an old-style file: only ipython1 counts
        assert processes.check(path).is_stale
    finally:
        for p in (ours, stranger):
            p.kill()
            p.wait()


def test_spawned_processes_never_look_in_the_current_directory() -> None:
    argv = processes.python_module("ipython1.scripts.ipengine", "--fork", "2")
    assert argv[:3] == [sys.executable, *processes.SAFE_PATH_FLAGS, "-m"][:3]
    env = processes.safe_environ({"PYTHONPATH": f"/abs/one{os.pathsep}{os.pathsep}rel/two"})
    assert env["PYTHONPATH"] == "/abs/one"
    assert "PYTHONPATH" not in processes.safe_environ({"PYTHONPATH": ""})


def test_what_an_older_version_left_open_is_tightened(tmp_path: Path) -> None:
    from ipython1.common.clusterdir import ClusterDir

    cluster_dir = ClusterDir("old", root=tmp_path)
    cluster_dir.log.mkdir(parents=True, mode=0o755)
    old_log = cluster_dir.log / "ipengine-1.log"
    old_log.write_text("user output")
    os.chmod(old_log, 0o644)
    os.chmod(cluster_dir.log, 0o755)
    cluster_dir.create(tighten=True)
    assert os.stat(old_log).st_mode & 0o777 == 0o600
    for d in (cluster_dir.path, cluster_dir.log, cluster_dir.security, cluster_dir.pid):
        assert os.stat(d).st_mode & 0o777 == 0o700

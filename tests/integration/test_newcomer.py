"""What a newcomer meets (issue 18), on a real 2-engine cluster: pending results
that survive a timed-out wait, %px in a real IPython shell (the line form's
options, failing cells, labelled output), errors that name their engines, and
a real terminal IPython in a pty (%autopx on one Enter, Ctrl-C in one line)."""

from __future__ import annotations

import os
import re
import sys

import pytest

from ipython1.common.errors import (
    ClientTimeout,
    CompositeError,
    ControllerNotFound,
    RemoteError,
    SerializationError,
)
from tests.conftest import running_cluster, wait_until

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("newcomer"), 2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mec(cluster):
    return cluster.client(timeout=60)


# -- pending results (item 2) ------------------------------------------------------------


def test_a_timed_out_wait_keeps_the_result(mec, tmp_path):
    go = tmp_path / "go"
    p = mec.execute(f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
                    "'kept'", targets=0, block=False)
    assert not p.ready()
    with pytest.raises(ClientTimeout):
        p.get_result(timeout=0.2)
    assert not p.wait(0.2) and not p.ready()
    go.touch()
    assert p.wait(30) and p.ready()
    assert p.get_result().output == "kept"
    assert p.get_result(block=False).output == "kept"  # fetched once, kept here


def test_wait_and_ready_report_a_failed_result_as_done(mec):
    p = mec.execute("1 / 0", targets=1, block=False)
    assert p.wait(30) and p.ready()
    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        p.get_result()


# -- errors name their engines (item 6) ---------------------------------------------------


def test_errors_from_pull_and_push_name_their_engines(mec, tmp_path):
    mec.execute("import threading; lock = threading.Lock()")
    with pytest.raises(CompositeError) as pulled:
        mec.pull("lock")
    assert "engines 0-1: SerializationError: cannot pull 'lock'" in str(pulled.value)
    with pytest.raises(SerializationError, match=r"^\[engine 1\] cannot pull 'lock'"):
        mec.pull("lock", targets=1)
    module = tmp_path / "client_only_module.py"  # importable here, not on the engines
    module.write_text("class Thing:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import client_only_module

        with pytest.raises(SerializationError, match=r"^\[engine 0\] .*client_only_module"):
            mec.push({"thing": client_only_module.Thing()}, targets=0)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("client_only_module", None)


# -- %px in a real IPython shell (items 5, 7) ------------------------------------------------


@pytest.fixture
def ipshell(mec):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    magics = mec.activate(shell)
    shown: list[str] = []
    shell._showtraceback = lambda etype, value, stb: shown.extend(stb)
    yield shell, shown
    del shell._showtraceback
    if magics.stream:
        mec.unsubscribe()


def run(shell, cell):
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        result = shell.run_cell(cell)
    return result, cap.stdout


def test_the_px_line_form_takes_the_cell_options(ipshell, mec):
    shell, _ = ipshell
    result, _ = run(shell, "%px --targets 0 only_on_zero = 1")
    assert result.success and mec.pull("only_on_zero", targets=0) == 1
    with pytest.raises(RemoteError, match="NameError"):
        mec.pull("only_on_zero", targets=1)
    result, out = run(shell, "%px -t 1 --noblock --targets=1 x = 'one'")
    assert result.success and "running without blocking" in out
    run(shell, "%result")
    assert mec.pull("x", targets=1) == "one"
    result, out = run(shell, "%px --targets 0:2 --stream print('live')")
    assert result.success and "[stdout:0] live" in out and "[stdout:1] live" in out
    assert out.count("] live") == 2  # streamed once, not again with the results


def test_px_fails_the_cell_when_engines_raise(ipshell, mec):
    shell, shown = ipshell
    result, _ = run(shell, "%px 1/0")
    assert isinstance(result.error_in_exec, CompositeError)
    assert "[engines 0-1: ZeroDivisionError: division by zero]" in shown
    assert any("----> 1 1/0" in line for line in shown)  # the engines' frames
    shown.clear()
    result, out = run(shell, "%%px --targets 1\nprint('before')\nundefined_name")
    assert isinstance(result.error_in_exec, RemoteError)
    assert "[stdout:1] before" in out  # an engine's output is labelled with its engine
    assert shown[0] == "[engine 1] NameError: name 'undefined_name' is not defined"
    shown.clear()
    mec.push({"d": 0}, targets=0)
    mec.push({"d": 1}, targets=1)
    result, out = run(shell, "%px 10 / d")
    assert isinstance(result.error_in_exec, CompositeError)
    assert "[1] Out[" in out and "10.0" in out  # what succeeded is shown too
    result, _ = run(shell, "%px --noblock 1 / d")
    assert result.success  # nothing has failed yet
    result, out = run(shell, "%result")
    assert isinstance(result.error_in_exec, CompositeError) and "10.0" not in out
    assert "[1] Out[" in out  # engine 1's 1.0


# -- connection errors (item 11) -----------------------------------------------------------


def test_after_ipcluster_stop_the_error_names_the_furl_file_and_profile(make_cluster):
    from ipython1.client.blocking import MultiEngineClient

    stopped = make_cluster(1, profile="gone")
    assert stopped.ipcluster("stop").returncode == 0
    with pytest.raises(ControllerNotFound) as info:
        MultiEngineClient(stopped.mec_furl, profile="gone", connect_timeout=5)
    message = str(info.value)
    assert stopped.mec_furl in message and "profile 'gone'" in message
    assert "no controller answers there" in message
    assert "ipcluster start -n 4 --daemon --profile gone" in message


# -- a terminal IPython in a pty (items 4, 8) ------------------------------------------------


@pytest.fixture
def terminal(cluster):
    import pexpect

    env = dict(cluster.env, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm",
               IPYTHONDIR=str(cluster.root / "ipython"))
    child = pexpect.spawn(sys.executable, ["-m", "IPython", "--no-banner", "--colors=nocolor",
                                           "--no-confirm-exit", "--HistoryManager.enabled=False"],
                          env=env, encoding="utf-8", timeout=30, dimensions=(50, 200))
    cluster.pids.append(child.pid)
    marks = iter(range(1000))

    def send(line: str, timeout: float = 30) -> str:
        """Type line and Enter; return what was shown until the next marker's output."""
        child.sendline(line)
        return settle(timeout)

    def settle(timeout: float = 30) -> str:
        mark = f"MARK{next(marks)}"
        child.sendline(f"print('{mark[:2]}' '{mark[2:]}')")  # the echo does not match
        child.expect(mark, timeout=timeout)
        return ANSI.sub("", child.before)

    try:
        send(f"from ipython1.kernel import client; mec = client.MultiEngineClient("
             f"{cluster.mec_furl!r}); mec.activate()")
        yield child, send, settle
    finally:
        child.close(force=True)


def test_autopx_runs_each_input_on_one_enter(terminal):
    child, send, _ = terminal
    assert "enabled" in send("%autopx")
    child.sendline("import os; os.getpid()")  # one Enter
    child.expect(r"\[1\] Out\[\d+\]: \d+", timeout=10)
    out = send("for i in range(2):\n    print('loop', i)\n")  # a block ends on a blank line
    assert "loop 1" in out
    assert "disabled" in send("%autopx")


def test_ctrl_c_during_a_blocking_call_prints_one_line(terminal, mec, cluster):
    child, send, settle = terminal
    for command in ("mec.execute('import time; time.sleep(60)')",
                    "%px import time; time.sleep(60)"):
        child.sendline(command)
        wait_until(lambda: all(q["running"] for q in mec.queue_status()), 30,
                   "both engines busy")
        child.sendintr()
        out = settle()
        assert "KeyboardInterrupt: interrupted engines 0-1" in out, out
        assert "Traceback" not in out and "concurrent" not in out, out
        assert len([ln for ln in out.splitlines() if ln.strip()]) <= 4, out
        wait_until(lambda: not any(q["running"] for q in mec.queue_status()), 10,
                   "the engines free again")
    # Waiting on a pending result: Ctrl-C stops the wait only; the result is kept.
    child.sendline("p = mec.execute('import time; time.sleep(60); 5', targets=0, block=False); "
                   "p.get_result()")
    wait_until(lambda: mec.queue_status(0)[0]["running"], 30, "engine 0 busy")
    child.sendintr()
    out = settle()
    assert "KeyboardInterrupt: stopped waiting for result" in out and "Traceback" not in out, out
    mec.interrupt(targets=0)
    assert "waited: True" in send("print('waited:', p.wait(30))")
    # Waiting on tasks: one line too; the tasks go on.
    child.sendline(f"tc = client.TaskClient({cluster.task_furl!r}); "
                   "tc.map(lambda s: __import__('time').sleep(s), [60, 60], chunksize=1)")
    wait_until(lambda: all(q["running"] for q in mec.queue_status()), 30, "both engines busy")
    child.sendintr()
    out = settle()
    assert "KeyboardInterrupt: stopped waiting for 2 task(s)" in out, out
    assert "Traceback" not in out, out
    assert all(q["running"] for q in mec.queue_status())  # the tasks go on
    mec.interrupt()


# -- the demo and the repository (item 11) ---------------------------------------------------


def test_the_demo_leaves_nothing_in_the_temporary_directory(tmp_path):
    import subprocess

    from tests.conftest import ROOT

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "IPYTHON1_DIR"}
    env["TMPDIR"] = str(tmp)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "equal to serial: True" in proc.stdout
    assert [p.name for p in tmp.iterdir() if p.name.startswith("ipython1-demo-")] == []


def test_git_ignores_the_venv_the_docs_create():
    from tests.conftest import ROOT

    assert "venv/" in (ROOT / ".gitignore").read_text().split()

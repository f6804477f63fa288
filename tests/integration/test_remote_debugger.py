"""Remote post-mortem debugging and breakpoint() on an engine, driven from a real terminal,
a Jupyter kernel's input box, and checked against the rest of the cluster."""

from __future__ import annotations

import json
import sys
import textwrap

import pexpect
import pytest

from tests.conftest import running_cluster, wait_until

FAILING = "def f():\n    secret = 42\n    1/0\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("debugger"), 2) as c:
        yield c


def _terminal(cluster, body: str) -> pexpect.spawn:
    """Run a client script in a real pty (its input() reads the terminal)."""
    script = textwrap.dedent(f"""
        from ipython1.client.blocking import MultiEngineClient
        mec = MultiEngineClient({cluster.mec_furl!r})
    """) + textwrap.dedent(body)
    child = pexpect.spawn(sys.executable, ["-c", script], env=cluster.env, encoding="utf-8",
                          timeout=60)
    cluster.pids.append(child.pid)
    return child


def test_post_mortem_prompt_in_the_terminal(cluster):
    child = _terminal(cluster, f"""
        mec.execute({FAILING!r}, targets=0)
        try:
            mec.execute("f()", targets=0)
        except Exception as e:
            print("RAISED", type(e).__name__)
        print("ENDED", mec.debug(0))
    """)
    child.expect("RAISED RemoteError")
    child.expect(r"-> 1/0")
    child.expect_exact("(Pdb 0) ")
    child.sendline("p secret * 2")
    child.expect("84")
    child.expect_exact("(Pdb 0) ")
    child.sendline("up")
    child.expect_exact("(Pdb 0) ")
    child.sendline("quit")
    child.expect("ENDED quit")
    child.expect(pexpect.EOF)


def test_breakpoint_hands_the_prompt_to_the_sending_client_and_others_wait(cluster):
    other = cluster.client()
    events = []
    other.subscribe_events(events.append) if hasattr(other, "subscribe_events") else None
    child = _terminal(cluster, """
        print("RESULT", mec.execute("a = 20\\nbreakpoint()\\nb = a + 1", targets=1))
        print("B", mec.pull("b", targets=1))
    """)
    child.expect_exact("(Pdb 1) ")
    # Another client's command for that engine waits in its queue meanwhile...
    pending = other.execute("c = 5", targets=1, block=False)
    status = other.queue_status(1)
    assert status[0]["running"]["op"] == "execute" and len(status[0]["queued"]) == 1
    # ...and may not type into this client's debugger.
    from ipython1.common.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        other._call(other._async.debug_input, 1, "p a")
    child.sendline("p a + 1")
    child.expect("21")
    child.expect_exact("(Pdb 1) ")
    child.sendline("continue")
    child.expect("B 21")
    child.expect(pexpect.EOF)
    pending.get_result(block=True)
    assert other.pull("c", targets=1) == 5
    # The session is in the event stream, attributed to the user who drove it.
    log = cluster.dir.path / "log" / "transcript.jsonl"
    kinds = [json.loads(x) for x in log.read_text().splitlines()]
    debugger = [e for e in kinds if e["kind"] == "debugger" and e["engine"] == 1]
    inputs = [e for e in kinds if e["kind"] == "debug_input" and e["engine"] == 1]
    assert debugger and debugger[-1]["user"]
    assert [e["data"]["line"] for e in inputs][-2:] == ["p a + 1", "continue"]


def test_interrupt_and_kill_work_while_an_engine_is_in_the_debugger(cluster):
    child = _terminal(cluster, """
        try:
            mec.execute("x = 1\\nbreakpoint()\\ny = 2", targets=0)
        except Exception as e:
            print("FAILED", type(e).__name__, e)
    """)
    child.expect_exact("(Pdb 0) ")
    helper = cluster.client()
    assert helper.interrupt(0) is True
    wait_until(lambda: helper.queue_status(0)[0]["running"] is None, timeout=30)
    child.sendline("")  # the user at the prompt presses Enter: told it is over
    child.expect("FAILED")
    child.expect(pexpect.EOF)
    assert "DebuggerQuit" in child.before or "interrupted" in child.before, child.before
    # The engine is usable again at once.
    assert helper.execute("z = 3", targets=0) is not None
    # Kill: an engine in the debugger still dies on request; its client is told.
    child = _terminal(cluster, """
        try:
            mec.execute("breakpoint()", targets=1)
        except Exception as e:
            print("FAILED", type(e).__name__)
    """)
    child.expect_exact("(Pdb 1) ")
    helper.kill(targets=1)
    wait_until(lambda: helper.get_ids() == [0], timeout=30)
    child.sendline("")
    child.expect("FAILED EngineError")
    child.expect(pexpect.EOF)


def test_debug_without_an_exception_says_so(cluster):
    mec = cluster.client()
    fresh = cluster.start_engine()
    wait_until(lambda: len(mec.get_ids()) == 2, timeout=60)
    new_id = max(mec.get_ids())
    from ipython1.common.errors import KernelError

    with pytest.raises(KernelError, match="no exception to debug"):
        mec.debug(new_id)
    assert fresh.poll() is None


def test_debug_magic_in_a_jupyter_kernel_uses_the_input_box(cluster):
    """A real ipykernel: %debug --engine N asks for each line through Jupyter's stdin."""
    jupyter_client = pytest.importorskip("jupyter_client")
    mec = cluster.client()
    engine = min(mec.get_ids())
    km = jupyter_client.KernelManager()
    km.start_kernel(env=cluster.env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)

        def run(code, answers=()):
            answers = list(answers)
            msg_id = kc.execute(code, allow_stdin=True)
            out, prompts = [], []
            while True:
                try:
                    request = kc.get_stdin_msg(timeout=0.2)
                except Exception:
                    request = None
                if request is not None:
                    prompts.append(request["content"]["prompt"])
                    kc.input(answers.pop(0) if answers else "quit")
                try:
                    msg = kc.get_iopub_msg(timeout=0.2)
                except Exception:
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(out), prompts

        run(f"from ipython1.client.blocking import MultiEngineClient\n"
            f"import ipython1.client.magics\n"
            f"mec = MultiEngineClient({cluster.mec_furl!r})\n"
            f"ipython1.client.magics.activate(mec)")
        run(f"mec.execute({FAILING!r} + 'f()', targets={engine}, block=False)")
        wait_until(lambda: mec.queue_status(engine)[0]["running"] is None, timeout=30)
        out, prompts = run(f"%debug --engine {engine}", ["p secret + 1", "quit"])
        assert prompts == [f"(Pdb {engine}) ", f"(Pdb {engine}) "], (out, prompts)
        assert "-> 1/0" in out and "43" in out, out
        # %px %debug: the same, on each target in turn.
        out, prompts = run(f"%%px --targets {engine}\n%debug", ["p secret", "q"])
        assert prompts and "42" in out, (out, prompts)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_debug_in_ipython1_shell(cluster, tmp_path):
    from tests.integration.test_collaboration import spawn_shell

    mec = cluster.client()
    n = len(mec.get_ids())
    shell = spawn_shell(cluster, cluster.mec_furl, tmp_path)
    try:
        shell.send("shell_secret = 99; 1/0\r")
        shell.expect("ZeroDivisionError")
        shell.expect(r"In \[\d+\]:")
        shell.send("%debug\r")
        for _ in range(n):  # one engine after another
            shell.expect(r"\(Pdb \d+\) ")
            shell.send("p shell_secret + 1\r")
            shell.expect("100")
            shell.expect(r"\(Pdb \d+\) ")
            shell.send("q\r")
        shell.expect(r"In \[\d+\]:")
    finally:
        shell.terminate(force=True)

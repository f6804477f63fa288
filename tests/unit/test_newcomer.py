"""What a newcomer meets (issue 18), the parts that need no cluster."""

from __future__ import annotations

import io

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from ipython1.client.magics import activate, split_line_options
from ipython1.client.shell import EventPrinter
from ipython1.client.taskspec import StringTask
from ipython1.common.errors import (
    CompositeError,
    KernelError,
    RemoteError,
    SerializationError,
    error_from_wire,
)
from ipython1.common.serialize import deserialize
from ipython1.controller.sessionlog import SessionLog, parse_script, to_script
from ipython1.engine.kernel import EngineKernel


@pytest.fixture(scope="module")
def kernel() -> EngineKernel:
    return EngineKernel()


def test_clear_after_clears_the_namespace_when_the_task_fails_too(kernel: EngineKernel) -> None:
    kernel.execute("kept = 1")
    _, ok = StringTask("left = 2", clear_after=True).to_wire()
    assert kernel.run_task(1, None, ok)[1] == "ok"
    assert "kept" not in kernel.shell.user_ns and "left" not in kernel.shell.user_ns
    kernel.execute("kept = 1")
    _, failing = StringTask("left = 2\n1 / 0", clear_after=True).to_wire()
    reply = kernel.run_task(2, None, failing)
    assert reply[1] == "error" and reply[3]["error"]["ename"] == "ZeroDivisionError"
    assert "kept" not in kernel.shell.user_ns and "left" not in kernel.shell.user_ns


# -- remote tracebacks (item 6) ---------------------------------------------------------

TRACEBACK = ("---------------------------------------------------------------------------\n"
             "ZeroDivisionError                         Traceback (most recent call last)\n"
             "Cell In[{n}], line 2, in f()\n----> 2     return 1/0\n\n"
             "ZeroDivisionError: division by zero")


def _zero_division(engine_id: int, n: int = 3) -> RemoteError:
    return RemoteError(engine_id, "ZeroDivisionError", "division by zero",
                       TRACEBACK.format(n=n), n)


def test_a_remote_error_renders_the_engine_frames_in_ipython() -> None:
    lines = _zero_division(1)._render_traceback_()
    assert lines[0] == "[engine 1] ZeroDivisionError: division by zero"
    assert "----> 2     return 1/0" in lines


def test_a_remote_error_shows_its_engine_frames_not_the_client_ones() -> None:
    shell = InteractiveShell.instance()
    shown: list[str] = []
    shell._showtraceback = lambda etype, value, stb: shown.extend(stb)
    shell.user_ns["error"] = _zero_division(1)
    try:
        assert shell.run_cell("raise error").error_in_exec is not None
    finally:
        del shell._showtraceback
    assert "----> 2     return 1/0" in shown and "raise error" not in "\n".join(shown)


def test_a_composite_error_groups_identical_tracebacks() -> None:
    errors: list[KernelError] = [_zero_division(i, n=3 + i % 2) for i in range(256)]
    errors.insert(7, RemoteError(300, "NameError", "name 'y' is not defined", "tb y"))
    err = CompositeError("execute failed", errors)
    lines = err._render_traceback_()
    assert "[engines 0-255: ZeroDivisionError: division by zero]" in lines
    assert "[engine 300: NameError: name 'y' is not defined]" in lines
    assert sum("return 1/0" in line for line in lines) == 1  # one traceback for 256 engines
    assert len(lines) < 20
    assert len(str(err).splitlines()) == 3


def test_a_composite_error_truncates_many_kinds_of_errors() -> None:
    errors: list[KernelError] = [RemoteError(i, "ValueError", f"bad {i}", f"tb {i}")
                                 for i in range(100)]
    lines = CompositeError("execute failed", errors)._render_traceback_()
    assert len(lines) < 30
    assert any("86 more kinds of error" in line for line in lines)
    assert "print_tracebacks()" in lines[-1]


def test_a_serialization_error_from_an_engine_names_it() -> None:
    err = error_from_wire({"kind": "kernel", "ename": "SerializationError", "engine_id": 2,
                           "evalue": "cannot pull 'lk': cannot serialize _thread.lock"})
    assert isinstance(err, SerializationError) and str(err).startswith("[engine 2] ")
    twice = CompositeError("pull failed", [err, error_from_wire(
        {"kind": "kernel", "ename": "SerializationError", "engine_id": 3,
         "evalue": "cannot pull 'lk': cannot serialize _thread.lock"})])
    assert "engines 2-3: SerializationError: cannot pull 'lk'" in str(twice)


# -- sessions: failed and interrupted commands (item 1) ----------------------------------


def test_failed_and_interrupted_commands_are_saved_commented_out() -> None:
    log = SessionLog(clock=lambda: 0.0)
    ok = log.record("execute", "all", "me", code="x = 1")
    log.finish([{"engine_id": 0, "status": "ok"}], ok)
    loop = log.record("execute", [0], "me", code="while True:\n    pass")
    log.finish([{"engine_id": 0, "status": "error",
                 "error": {"ename": "KeyboardInterrupt"}}], loop)
    log.record("execute", "all", "me", code="still_running()")  # no replies yet
    text = to_script(log.snapshot(), deserialize)
    assert "# failed: KeyboardInterrupt on engine 0\n# while True:\n#     pass\n" in text
    assert "# failed: still running when the session was saved\n# still_running()" in text
    ns: dict = {}
    exec(text, ns)  # the saved file is a script: the failed commands do not run
    assert ns["x"] == 1
    commands = parse_script(text)
    assert [c["failed"] for c in commands] == [
        None, "KeyboardInterrupt on engine 0", "still running when the session was saved"]
    assert commands[1]["code"] == "while True:\n    pass"  # for include_failed=True


# -- %px and %autopx (items 4, 5) -------------------------------------------------------------


@pytest.mark.parametrize("line, options, code", [
    ("--targets 0 x = 1", "--targets 0", "x = 1"),
    ("-t 0:4 --noblock --stream print(1)", "-t 0:4 --noblock --stream", "print(1)"),
    ("--targets=1,3 --block a - b", "--targets=1,3 --block", "a - b"),
    ("x = -1", "", "x = -1"),
    ("--no-such-option x", "", "--no-such-option x"),
])
def test_the_px_line_form_splits_its_options_from_its_code(line, options, code) -> None:
    assert split_line_options(line) == (options, code)


def test_autopx_leaves_input_completion_to_python() -> None:
    shell = InteractiveShell.instance()
    magics = activate(object(), shell)  # a client is not needed to toggle
    manager = shell.input_transformer_manager
    try:
        with capture_output():
            magics.autopx()
        assert manager.check_complete("x = 1") == ("complete", None)  # one Enter runs it
        assert manager.check_complete("for i in x:")[0] == "incomplete"
        assert manager.transform_cell("x = 1").startswith("get_ipython().run_cell_magic('px'")
    finally:
        with capture_output():
            magics.autopx()
    assert manager.transform_cell("x = 1") == "x = 1\n"


# -- ipcluster's options (item 9) --------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["start", "-n", "0"], "ipcluster start: -n takes a number of engines, at least 1; not '0'"),
    (["start", "-n", "-2"], "ipcluster start: -n takes a number of engines, at least 1; not '-2'"),
    (["start", "-n", "abc"], "ipcluster start: -n takes a number of engines, at least 1; "
                             "not 'abc'"),
    (["start", "--timeout", "soon"], "ipcluster start: --timeout takes seconds"),
    (["stop", "--grace", "-1"], "ipcluster stop: --grace takes seconds, not negative"),
    (["start", "--bogus"], "ipcluster start: option --bogus not recognized"),
    (["frob"], "ipcluster: Unknown command: frob"),
])
def test_ipcluster_option_errors_are_one_line(argv, message, tmp_path, monkeypatch) -> None:
    from ipython1.scripts import ipcluster

    monkeypatch.setenv("IPYTHON1_DIR", str(tmp_path))
    out = io.StringIO()
    assert ipcluster.main(argv, out=out) == 2
    assert out.getvalue().startswith(message) and out.getvalue().count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing was started or created


def test_ipcluster_version_and_start_help(capsys) -> None:
    import ipython1
    from ipython1.scripts import ipcluster

    with pytest.raises(SystemExit) as done:
        ipcluster.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"ipcluster (ipython1) {ipython1.__version__}\n"
    with pytest.raises(SystemExit):
        ipcluster.main(["start", "--help"])
    help_text = capsys.readouterr().out
    assert help_text.startswith("Usage: ipcluster [--profile NAME] start [options]\n")
    assert "Twisted" not in help_text and "``start``" not in help_text


# -- ipython1-shell's event lines (item 11) -----------------------------------------------------


def test_the_shell_echoes_its_own_chat_and_names_an_inspect_once() -> None:
    out = io.StringIO()
    printer = EventPrinter("alice-client-1", out)
    printer.history_until = 0
    printer({"seq": 1, "client": "alice-client-1", "user": "alice", "kind": "chat",
             "data": {"text": "hello"}})
    printer({"seq": 2, "client": "alice-client-1", "user": "alice", "kind": "queued",
             "data": {"op": "execute", "targets": [0], "code": "x = 1"}})  # own: not echoed
    printer({"seq": 3, "client": "bob-client-1", "user": "bob", "kind": "queued",
             "data": {"op": "inspect", "targets": [0], "description": "inspect y"}})
    printer({"seq": 4, "client": "bob-client-1", "user": "bob", "kind": "queued",
             "data": {"op": "push", "targets": [0, 1], "names": ["a", "b"]}})
    assert out.getvalue().splitlines() == [
        "[alice] says: hello", "[bob] inspect y on 0", "[bob] push a, b on 0-1"]


def test_the_shell_keeps_the_history_it_subscribed_with_for_recent() -> None:
    out = io.StringIO()
    printer = EventPrinter("carol-client-1", out)
    printer({"seq": 1, "user": "bob", "kind": "chat", "data": {"text": "earlier"}, "time": 0})
    printer({"seq": 2, "user": "alice", "kind": "joined", "data": {"kind": "full"}, "time": 0})
    printer.history_until = 2  # the subscription's answer: events up to 2 are history
    assert out.getvalue() == ""
    assert [line.split(" ", 1)[1] for line in printer.recent(timeout=0)] == [
        "[bob] says: earlier", "* alice joined (full)"]

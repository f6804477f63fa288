"""Pure pieces of issue 3: output batching and printing, session scripts, targets."""

from __future__ import annotations

import io

import numpy as np
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from ipython1.common import wire
from ipython1.common.errors import SessionFileError
from ipython1.common.serialize import deserialize, serialize
from ipython1.controller.sessionlog import SessionLog, parse_script, to_script
from ipython1.engine.output import OutputBatcher, StreamPrinter


def make_batcher(**kw):
    sent, clock = [], Clock()
    batcher = OutputBatcher(sent.append, delay=0.05, call_from_thread=lambda f: f(),
                            clock=clock, **kw)
    return batcher, sent, clock


def test_batcher_coalesces_writes_until_the_delay():
    batcher, sent, clock = make_batcher()
    for i in range(1000):
        batcher.write("stdout", f"{i}\n")
    batcher.write("stderr", "warn\n")
    batcher.write("stdout", "last\n")
    assert sent == []
    clock.advance(0.05)
    assert len(sent) == 1 and [name for name, _ in sent[0]] == ["stdout", "stderr", "stdout"]
    assert sent[0][0][1] == "".join(f"{i}\n" for i in range(1000))
    clock.advance(1)
    assert len(sent) == 1  # nothing new, nothing sent


def test_batcher_flush_sends_at_once_and_caps_what_waits():
    batcher, sent, clock = make_batcher(max_pending=10)
    batcher.write("stdout", "12345")
    batcher.write("stdout", "678901234")  # over the cap: dropped, and said so
    batcher.flush()
    assert sent[0][0] == ["stdout", "12345"]
    assert "9 characters of live output dropped" in sent[0][1][1]
    assert batcher.flush() is None


def test_batcher_is_idle_only_once_every_send_is_acknowledged():
    # An engine's reply on the command channel waits for this (engine.ShellRunner).
    sends = []
    clock = Clock()
    batcher = OutputBatcher(lambda chunks: sends.append(Deferred()) or sends[-1], delay=0.05,
                            call_from_thread=lambda f: f(), clock=clock)
    assert batcher.idle() and batcher.drain().called
    batcher.write("stdout", "a")
    assert not batcher.idle()  # written, not sent
    clock.advance(0.05)
    batcher.write("stdout", "b")
    drained = batcher.drain()  # sends "b" now; "a" is still unacknowledged
    assert len(sends) == 2 and not drained.called and not batcher.idle()
    sends[1].callback(None)
    assert not drained.called  # "a" is still out
    sends[0].errback(RuntimeError("the controller went away"))
    assert drained.called and batcher.idle()
    sends[0].addErrback(lambda f: None)


def test_stream_printer_lines_and_carriage_returns():
    out = io.StringIO()
    printer = StreamPrinter(out)
    printer(0, "stdout", "a\nb")
    printer(1, "stderr", "\r10%\r50%")
    printer(0, "stdout", "c\n")
    printer(1, "stderr", "\r100%\n")
    printer(2, "stdout", "tail")
    printer.flush()
    assert out.getvalue().splitlines() == [
        "[stdout:0] a", "[stdout:0] bc", "[stderr:1] 100%", "[stdout:2] tail"]


def test_session_log_round_trips_through_a_script():
    log = SessionLog(clock=lambda: 0.0)
    e1 = log.record("execute", "all", "me-client-1", code="x = 1\n%timeit x")
    log.finish([{"engine_id": 0, "status": "ok"}], e1)
    e2 = log.record("push", [0, 1], "me-client-1",
                    values={"all": {"a": serialize([1, 2]), "arr": serialize(np.ones(3))}})
    log.finish([{"engine_id": 0, "status": "error", "error": {"ename": "NameError"}}], e2)
    big = log.record("push", "all", "me", values={"all": {"b": [b"x" * 2_000_000]}})
    assert big["values"] is None and big["names"] == ["b"]
    text = to_script(log.snapshot(), deserialize)
    commands = parse_script(text)
    assert [c["targets"] for c in commands] == ["all", [0, 1], "all"]
    assert commands[0]["code"] == "x = 1\n%timeit x"
    assert "a = [1, 2]" in commands[1]["code"] and "_ipython1_load(" in commands[1]["code"]
    assert "(error: NameError on engine 0)" in commands[1]["header"]
    assert commands[2]["skip"].startswith("the pushed values (b) were too large")
    ns: dict = {}
    exec(commands[1]["code"], ns)
    assert ns["a"] == [1, 2] and ns["arr"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("text, message", [
    ("", "not an ipython1 session file"),
    ("# ipython1 session log\nx = 1\n", ":2: code before the first"),
    ("# ipython1 session log\n# ---- [1] execute\nx = 1\n", ":3: expected '# targets:"),
    ("# ipython1 session log\n# ---- [1] execute\n# targets: 1.5\n", ":3: bad targets"),
    ("# ipython1 session log\n# ---- [1] execute\n# targets: all\nfor\n",
     ":4: the command does not parse"),
])
def test_bad_session_files_name_the_line(text, message):
    with pytest.raises(SessionFileError, match=message):
        parse_script(text)


def test_session_log_is_bounded(monkeypatch):
    from ipython1.controller import sessionlog as session

    monkeypatch.setattr(session, "MAX_ENTRIES", 3)
    log = SessionLog()
    for i in range(5):
        log.record("execute", "all", "c", code=str(i))
    assert [e["code"] for e in log.snapshot()] == ["2", "3", "4"]


def test_px_targets_syntax():
    from IPython.core.error import UsageError

    from ipython1.client.magics import parse_targets

    assert parse_targets("all") == "all" and parse_targets("3") == 3
    assert parse_targets("0:4") == [0, 1, 2, 3] and parse_targets("0:8:2") == [0, 2, 4, 6]
    assert parse_targets("1,3,5") == [1, 3, 5] and parse_targets(":2") == [0, 1]
    with pytest.raises(UsageError, match="bad targets"):
        parse_targets("1-x")


def test_tub_options_from_the_environment(monkeypatch):
    monkeypatch.setenv(wire.TUB_OPTIONS_ENV, '{"keepaliveTimeout": 1, "disconnectTimeout": 3}')
    assert wire.tub_options() == {"keepaliveTimeout": 1, "disconnectTimeout": 3}
    monkeypatch.setenv(wire.TUB_OPTIONS_ENV, '{"keepalive": 1}')
    with pytest.raises(ValueError, match="unknown option"):
        wire.tub_options()
    monkeypatch.setenv(wire.TUB_OPTIONS_ENV, "nonsense")
    with pytest.raises(ValueError, match="not a JSON object"):
        wire.tub_options()
    monkeypatch.delenv(wire.TUB_OPTIONS_ENV)
    assert wire.tub_options() == wire.TUB_OPTIONS

"""The engine's remote pdb without any network: prompts out, lines in, on the shell thread."""

from __future__ import annotations

import queue
import sys
import threading

from ipython1.engine.debugger import DebuggerQuit, DebugSession


class Driver:
    """Play the client: collect prompts and ends, feed lines."""

    def __init__(self) -> None:
        self.prompts: queue.Queue[str] = queue.Queue()
        self.ended: queue.Queue[str] = queue.Queue()
        self.session = DebugSession(3, self.prompts.put, self.ended.put)

    def send(self, line: str) -> str:
        self.session.feed(line)
        return self.prompts.get(timeout=10)


def _failing() -> None:
    secret = 41
    secret += 1
    raise ZeroDivisionError(f"boom {secret}")


def test_post_mortem_shows_the_failing_frame_and_evaluates_in_it():
    try:
        _failing()
    except ZeroDivisionError as e:
        tb = e.__traceback__
    d = Driver()
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(d.session.post_mortem(tb)))
    thread.start()
    first = d.prompts.get(timeout=10)
    assert "_failing" in first and 'raise ZeroDivisionError' in first
    assert "(Pdb 3) " in first
    assert "42" in d.send("p secret")
    d.session.feed("q")
    thread.join(10)
    assert not thread.is_alive() and result == ["quit"]
    d.ended.get(timeout=5)


def test_breakpoint_stops_and_continue_lets_the_code_finish():
    d = Driver()
    out: list[int] = []

    def code() -> None:
        a = 5
        d.session.set_trace(sys._getframe())
        b = a * 2
        out.append(b)

    thread = threading.Thread(target=code)
    thread.start()
    first = d.prompts.get(timeout=10)
    assert "b = a * 2" in first
    assert "5" in d.send("p a")
    d.session.feed("c")
    thread.join(10)
    assert out == [10]
    d.ended.get(timeout=5)  # the client is told the session is over


def test_an_interrupt_while_waiting_quits_the_debugger():
    d = Driver()
    errors: list[BaseException] = []

    def code() -> None:
        try:
            d.session.set_trace(sys._getframe())
            _ = 1
        except BaseException as e:  # what the user code sees
            errors.append(e)
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=code)
    thread.start()
    d.prompts.get(timeout=10)
    d.session.feed(None)  # what the pipe does on KeyboardInterrupt
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], DebuggerQuit)

"""IPython over the wire, on a real 4-engine cluster: history, introspection,
completion, magics, rich output, live streaming, interrupt, and the %px magics
inside a real IPython InteractiveShell."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest

from ipython1.common.errors import RemoteError, ResultNotReady
from ipython1.engine.output import StreamPrinter
from tests.conftest import wait_until


@pytest.fixture(autouse=True)
def clean_namespace(mec):
    yield
    mec.reset()


# -- history, introspection, completion --------------------------------------------


def test_history_returns_numbered_inputs(mec):
    first = mec.execute("a = 1", targets=2).execution_count
    mec.execute("b = a + 1", targets=2)
    mec.execute("b * 10", targets=2)
    items = mec.history(first, targets=2)
    assert items == [[first, "a = 1"], [first + 1, "b = a + 1"], [first + 2, "b * 10"]]
    assert mec.history(first + 1, first + 2, targets=2) == [[first + 1, "b = a + 1"]]
    assert mec.get_result(first + 2, targets=2).output == 20  # Out[n] too
    per_engine = mec.history(targets=[0, 1])
    assert len(per_engine) == 2 and all(isinstance(h, list) for h in per_engine)


def test_inspect_like_question_marks(mec):
    mec.execute("def f(a, b=1):\n    'Add things.'\n    return a + b", targets=0)
    info = mec.inspect("f", targets=0)
    assert info["data"]["definition"] == "f(a, b=1)"
    assert info["data"]["docstring"] == "Add things."
    assert info["data"]["type_name"] == "function"
    assert "Signature: f(a, b=1)" in info["text"] and "Add things." in info["text"]
    detailed = mec.inspect("f", detail_level=1, targets=0)
    assert "return a + b" in detailed["data"]["source"]
    assert "return a + b" in detailed["text"]
    mec.execute("import numpy as np; x = np.zeros((3, 4))", targets=0)
    assert mec.inspect("x", targets=0)["data"]["length"] == "3"
    assert "zeros" in mec.inspect("np.zeros", targets=0)["text"]


def test_inspect_undefined_name_is_a_clear_error(mec):
    with pytest.raises(RemoteError) as info:
        mec.inspect("no_such_thing", targets=1)
    assert info.value.ename == "NameError" and "no_such_thing" in info.value.evalue
    with pytest.raises(ValueError, match="detail_level"):
        mec.inspect("x", detail_level=3, targets=1)
    assert mec.execute("1 + 1", targets=1).output == 2  # nothing else changed


def test_who_and_whos_show_names_types_and_shapes(mec):
    mec.execute("import numpy as np\narr = np.ones((2, 5), dtype=np.float32)\nn = 3\ns = 'hi'",
                targets=[0, 1])
    assert mec.who(targets=0) == ["arr", "n", "np", "s"]
    whos = mec.whos(targets=1)
    rows = {r["name"]: r for r in whos["data"]}
    assert rows["arr"]["type"] == "ndarray" and rows["arr"]["shape"] == [2, 5]
    assert rows["arr"]["dtype"] == "float32" and rows["n"]["info"] == "3"
    assert "arr" in whos["text"] and "shape 2x5, dtype float32" in whos["text"]


def test_complete_attributes_of_remote_objects_and_magics(mec):
    mec.execute("import numpy as np\nx = np.arange(4)")
    done = mec.complete("x.sh", targets=3)
    assert done == {"text": ".sh", "matches": [".shape"]}  # as IPython itself answers
    line = mec.complete("", line="np.linal", cursor_pos=8, targets=3)
    assert any(m.endswith("linalg") for m in line["matches"])
    assert "%timeit" in mec.complete("%tim", targets=3)["matches"]
    every = mec.complete("x.dty")
    assert len(every) == 4 and all(any("dtype" in m for m in c["matches"]) for c in every)
    with pytest.raises(RemoteError, match="cursor_pos"):
        mec.complete("x", line="x", cursor_pos=9, targets=0)


# -- magics and shell escapes on engines ----------------------------------------------


def test_magics_and_shell_escapes_run_on_engines(mec, tmp_path):
    r = mec.execute("%timeit -n 1 -r 1 sum(range(100))", targets=0)
    assert "loop" in r.stdout
    r = mec.execute("%time y = sum(range(10))", targets=0)
    assert "Wall time" in r.stdout
    r = mec.execute("%who", targets=0)
    assert "y" in r.stdout
    script = tmp_path / "script.py"
    r = mec.execute(f"%%writefile {script}\nfrom_script = 6 * 7\nprint('ran script')\n",
                    targets=0)
    assert script.read_text() == "from_script = 6 * 7\nprint('ran script')\n"
    r = mec.execute(f"%run {script}", targets=0)
    assert r.stdout == "ran script\n" and mec.pull("from_script", targets=0) == 42
    r = mec.execute("!echo hello from $HOSTNAME_X", targets=1)
    assert r.stdout.startswith("hello from")
    r = mec.execute("files = !echo one; echo two\nfiles", targets=1)
    assert list(r.output) == ["one", "two"]


def test_magic_that_does_not_exist_is_a_clear_error(mec):
    with pytest.raises(RemoteError) as info:
        mec.execute("%no_such_magic 1", targets=0)
    assert info.value.ename == "UsageError" and "no_such_magic" in info.value.evalue
    assert mec.execute("'fine'", targets=0).output == "fine"


def test_engines_log_their_own_input(mec, tmp_path):
    log = tmp_path / "engine0.log"
    mec.execute(f"%logstart -o {log}", targets=0)
    mec.execute("logged = 7 * 6", targets=0)
    mec.execute("logged", targets=0)
    mec.execute("%logstop", targets=0)
    text = log.read_text()
    assert "logged = 7 * 6" in text and "#[Out]# 42" in text


def test_rich_output_is_captured_and_displayed(mec):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()  # a frontend to display in

    code = ("from IPython.display import HTML, display\n"
            "display(HTML('<b>bold</b>'))\n"
            "class R:\n"
            "    def _repr_html_(self): return '<i>rich</i>'\n"
            "    def __repr__(self): return 'R()'\n"
            "R()")
    r = mec.execute(code, targets=0)
    assert r.outputs[0]["data"]["text/html"] == "<b>bold</b>"
    assert r.data["text/html"] == "<i>rich</i>" and r.output_repr == "R()"
    with capture_output() as cap:  # what a Jupyter frontend would receive
        mec.execute(code, targets=[0, 1])._ipython_display_()
    html = [o.data.get("text/html") for o in cap.outputs]
    assert html == ["<b>bold</b>", "<i>rich</i>"] * 2
    assert "[1] In [" in cap.stdout and "[1] Out[" in cap.stdout


# -- live streaming -----------------------------------------------------------------


def test_stream_arrives_before_the_command_finishes(shared_cluster):
    mec = shared_cluster.client(timeout=60)
    got: list[tuple[float, int, str, str]] = []
    mec.subscribe(lambda e, name, text: got.append((time.monotonic(), e, name, text)))
    pending = mec.execute("import time, sys\nprint('started', flush=True)\n"
                          "sys.stderr.write('warming\\n')\ntime.sleep(1.5)\nprint('finished')",
                          targets=[0, 1], block=False)
    wait_until(lambda: {(e, t) for _, e, _, t in got} >= {(0, "started\n"), (1, "started\n")},
               10, "live output from both engines")
    with pytest.raises(ResultNotReady):  # the output came while the command was running
        pending.get_result(block=False)
    results = pending.get_result()
    done = time.monotonic()
    assert [r.stdout for r in results] == ["started\nfinished\n"] * 2
    streamed = {e: "".join(t for _, e2, n, t in got if e2 == e and n == "stdout") for e in (0, 1)}
    assert streamed == {0: "started\nfinished\n", 1: "started\nfinished\n"}
    assert ("warming\n" in [t for _, e, n, t in got if n == "stderr" and e == 0])
    first = min(t for t, _, _, text in got if text == "started\n")
    assert done - first > 1.0  # it really came well before the end
    mec.unsubscribe()


def test_stream_nothing_lost_on_error_and_tight_loops_coalesce(shared_cluster):
    mec = shared_cluster.client(timeout=60)
    got: list[tuple[int, str, str]] = []
    mec.subscribe(lambda e, name, text: got.append((e, name, text)))
    with pytest.raises(RemoteError):
        mec.execute("print('before the error')\nraise ValueError('boom')", targets=2)
    assert "".join(t for _, n, t in got if n == "stdout") == "before the error\n"
    got.clear()
    r = mec.execute("for i in range(20000):\n    print(i)", targets=2)
    assert "".join(t for _, n, t in got) == r.stdout  # all of it, in order
    assert len(got) < 100  # coalesced, not 20000 messages
    mec.unsubscribe()


def test_stream_printer_labels_lines_and_honours_carriage_returns(shared_cluster):
    mec = shared_cluster.client(timeout=60)
    out = io.StringIO()
    printer = StreamPrinter(out)
    mec.subscribe(printer)
    mec.execute("import sys\nfor i in range(1, 6):\n    sys.stderr.write(f'\\r{i}/5')\n"
                "sys.stderr.write('\\n')\nprint('a')\nprint('b', end='')", targets=3)
    printer.flush()
    lines = out.getvalue().splitlines()
    assert "[stderr:3] 5/5" in lines and "[stdout:3] a" in lines and "[stdout:3] b" in lines
    assert not any("1/5" in line for line in lines)
    mec.unsubscribe()


def test_blocking_client_prints_live_output(shared_cluster, capsys):
    mec = shared_cluster.client(timeout=60)
    mec.subscribe()  # the default printer
    mec.execute("print('hello live')\nprint('no newline', end='')", targets=[0, 1])
    mec.unsubscribe()
    text = capsys.readouterr().out
    for e in (0, 1):
        assert f"[stdout:{e}] hello live" in text and f"[stdout:{e}] no newline" in text


def test_other_clients_output_only_on_request(shared_cluster):
    a = shared_cluster.client(timeout=60)
    b = shared_cluster.client(timeout=60)
    mine, everyone = [], []
    a.subscribe(lambda e, n, t: mine.append(t))
    b.subscribe(lambda e, n, t: everyone.append(t), own_only=False)
    b.execute("print('from b')", targets=0)
    a.execute("print('from a')", targets=0)
    assert mine == ["from a\n"]
    wait_until(lambda: everyone == ["from b\n", "from a\n"], 10, "both outputs")


# -- interrupt ------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["while True: pass", "import time; time.sleep(1000)"])
def test_interrupt_stops_running_code_within_a_second(mec, tmp_path, code):
    flag = tmp_path / "started"
    running = mec.execute(f"open({str(flag)!r}, 'w').close()\n{code}", targets=1, block=False)
    queued = mec.execute("after = 'ran'", targets=1, block=False)
    wait_until(flag.exists, 30, "the code to start")
    start = time.monotonic()
    assert mec.interrupt(targets=1) is True
    with pytest.raises(RemoteError) as info:
        running.get_result(timeout=10)
    assert time.monotonic() - start < 1.0
    assert info.value.ename == "KeyboardInterrupt"
    assert queued.get_result(timeout=10)  # the queue goes on
    assert mec.pull("after", targets=1) == "ran"


def test_interrupting_idle_engines_reports_false(mec):
    assert mec.interrupt() == [False, False, False, False]
    assert mec.interrupt(targets=2) is False
    assert mec.execute("'still fine'", targets=2).output == "still fine"


def test_ctrl_c_in_blocking_client_interrupts_its_engines(shared_cluster, mec, tmp_path):
    flag = tmp_path / "started"
    script = (
        "import sys\n"
        "from ipython1.client.blocking import MultiEngineClient\n"
        f"mec = MultiEngineClient({shared_cluster.mec_furl!r})\n"
        "try:\n"
        f"    mec.execute(\"open({str(flag)!r}, 'w').close(); import time; time.sleep(1000)\","
        " targets=[2, 3])\n"
        "except KeyboardInterrupt:\n"
        "    print('client interrupted', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=shared_cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shared_cluster.pids.append(proc.pid)
    try:
        wait_until(flag.exists, 30, "the engines to start sleeping")
        wait_until(lambda: all(s["running"] for s in mec.queue_status(targets=[2, 3])), 10,
                   "both engines busy")
        start = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert "client interrupted" in out, out
        assert [r.output for r in mec.execute("'free'", targets=[2, 3])] == ["free", "free"]
        assert time.monotonic() - start < 5
    finally:
        if proc.poll() is None:
            proc.kill()


# -- the %px magics in a real IPython shell ---------------------------------------------


@pytest.fixture
def ipshell(mec):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    magics = mec.activate(shell)
    yield shell, magics
    if magics.autopx_on:
        magics.autopx()


def run(shell, cell):
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        result = shell.run_cell(cell)
    return result, cap


def test_px_line_and_cell_magics(ipshell, mec):
    shell, _ = ipshell
    _, cap = run(shell, "%px pxvalue = 5")
    assert mec.pull("pxvalue") == [5] * 4
    _, cap = run(shell, "%px pxvalue * 2")
    for e in range(4):
        assert f"[{e}] Out[" in cap.stdout and "]: 10" in cap.stdout
    _, cap = run(shell, "%%px --targets 0:2\nimport os\nprint('on', 'engine')\npxvalue + 1")
    assert cap.stdout.count("on engine") == 2 and "[1] Out[" in cap.stdout
    assert "[2] Out[" not in cap.stdout
    _, cap = run(shell, "%%px --targets 1,3 --noblock\nimport time; time.sleep(0.2); 'late'")
    assert "running without blocking" in cap.stdout
    _, cap = run(shell, "%result")
    assert "[1] Out[" in cap.stdout and "[3] Out[" in cap.stdout and "'late'" in cap.stdout
    assert "[0] Out[" not in cap.stdout


def test_px_engine_errors_fail_the_cell(ipshell):
    from ipython1.common.errors import CompositeError

    shell, _ = ipshell
    result, cap = run(shell, "%px 1/0")
    assert isinstance(result.error_in_exec, CompositeError)  # as in ipyparallel
    assert result.error_in_exec.engine_ids() == [0, 1, 2, 3]
    result, cap = run(shell, "%px %no_such_magic")
    assert "UsageError" in str(result.error_in_exec) and "no_such_magic" in str(
        result.error_in_exec)


def test_autopx_sends_every_input_until_toggled(ipshell, mec):
    shell, magics = ipshell
    _, cap = run(shell, "%autopx")
    assert "enabled" in cap.stdout and magics.autopx_on
    run(shell, "remote_only = 41")
    _, cap = run(shell, "remote_only + 1")
    assert "]: 42" in cap.stdout
    _, cap = run(shell, "%autopx")
    assert "disabled" in cap.stdout
    assert "remote_only" not in shell.user_ns
    assert mec.pull("remote_only") == [41] * 4
    run(shell, "local_only = 1")
    assert shell.user_ns["local_only"] == 1


def test_pxconfig_and_result(ipshell, mec):
    shell, magics = ipshell
    _, cap = run(shell, "%pxconfig --targets 2 --noblock")
    assert "targets: 2" in cap.stdout and "block: False" in cap.stdout
    run(shell, "%px cfg = 'two'")
    _, cap = run(shell, "%result")
    assert mec.pull("cfg", targets=2) == "two"
    with pytest.raises(RemoteError):
        mec.pull("cfg", targets=0)
    _, cap = run(shell, "%pxconfig --targets all --block --stream")
    assert "stream: True" in cap.stdout
    _, cap = run(shell, "%px print('streamed')")
    assert cap.stdout.count("] streamed\n") == 4  # once each (live), not again in results
    run(shell, "%pxconfig --nostream")
    result, cap = run(shell, "%pxconfig --targets 1-x")
    assert not result.success and "bad targets" in str(result.error_in_exec)


def test_load_ext_registers_the_magics(shared_cluster):
    from IPython.core.interactiveshell import InteractiveShell

    from ipython1.client import magics as magics_mod

    shell = InteractiveShell.instance()
    saved = magics_mod._installed.pop(id(shell), None)
    try:
        result, _ = run(shell, "%load_ext ipython1.magics")
        assert result.success and "px" in shell.magics_manager.magics["line"]
        assert "px" in shell.magics_manager.magics["cell"]
        assert magics_mod._installed[id(shell)]._client is None  # connects on first use
    finally:
        if saved is not None:
            magics_mod._installed[id(shell)] = saved

"""The engine's IPython kernel in-process: what the speed-ups must not change."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

import ipython1.engine.kernel as engine_module
import ipython1.engine.runner as runner_module
from ipython1.engine.kernel import EngineKernel
from ipython1.engine.runner import ShellRunner
from ipython1.engine.shell import StaticTransformCache


@pytest.fixture(scope="module")
def kernel() -> EngineKernel:
    return EngineKernel()


def test_cached_cells_still_run_every_time(kernel: EngineKernel) -> None:
    kernel.execute("hits = 0")
    for _ in range(3):
        kernel.execute("hits += 1")
    assert kernel.shell.user_ns["hits"] == 3


def test_magics_and_shell_escapes_are_transformed_from_the_cache(kernel: EngineKernel) -> None:
    for _ in range(2):  # the second time from the cache
        kernel.execute("listing = !echo cached")
        kernel.execute("%alias_magic cached_time time")
    assert list(kernel.shell.user_ns["listing"]) == ["cached"]


def test_a_new_input_transformer_applies_to_cells_seen_before(kernel: EngineKernel) -> None:
    manager = kernel.shell.input_transformer_manager
    assert isinstance(manager.transform_cell, StaticTransformCache)
    kernel.execute("seen = 'before'")

    def rewrite(lines: list[str]) -> list[str]:
        return [line.replace("'before'", "'after'") for line in lines]

    manager.line_transforms.append(rewrite)
    try:
        kernel.execute("seen = 'before'")
        assert kernel.shell.user_ns["seen"] == "after"
    finally:
        manager.line_transforms.remove(rewrite)
    kernel.execute("seen = 'before'")
    assert kernel.shell.user_ns["seen"] == "before"


def test_the_cache_is_bounded(kernel: EngineKernel) -> None:
    cache = kernel.shell.input_transformer_manager.transform_cell
    for i in range(StaticTransformCache.MAX_CELLS + 50):
        kernel.execute(f"x_{i} = {i}")
    assert len(cache._cells) <= StaticTransformCache.MAX_CELLS
    long_cell = "y = " + repr("x" * (StaticTransformCache.MAX_CELL_CHARS + 1))
    kernel.execute(long_cell)  # long cells are not kept
    assert kernel.shell.user_ns["y"] and long_cell not in cache._cells


def test_history_keeps_in_and_out_but_no_write_behind_backlog(kernel: EngineKernel) -> None:
    before = kernel.execute("1 + 1")["execution_count"]
    for _ in range(20):
        kernel.execute("pass")
    history = kernel.shell.history_manager
    assert history.input_hist_raw[before] == "1 + 1"
    assert history.output_hist[before] == 2
    # Nothing ever writes IPython's in-memory database out: these only grew.
    assert history.db_input_cache == [] and history.db_output_cache == []


def test_top_level_await_still_runs_when_its_cell_comes_back(kernel: EngineKernel) -> None:
    cell = ("import asyncio\nawait asyncio.sleep(0)\n"
            "awaited = awaited + 1 if 'awaited' in dir() else 1")
    for _ in range(2):
        kernel.execute(cell)
    assert kernel.shell.user_ns["awaited"] == 2
    kernel.shell.autoawait = False
    try:
        with pytest.raises(engine_module._CellFailed):
            kernel.execute(cell)  # without autoawait the same cell is a SyntaxError
    finally:
        kernel.shell.autoawait = True


def test_an_interrupt_for_a_command_not_yet_started_stops_it_as_it_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ShellRunner()
    ran: list[str] = []
    replies: list[dict] = []
    d = runner.submit(lambda: ran.append("job"))
    d.addCallback(replies.append)
    assert runner.interrupt()  # handed over, not started: still the running command
    shell_thread = threading.Thread(target=runner.run_forever, daemon=True)
    delivered = threading.Event()
    # Replies reach the reactor with callFromThread: deliver them here instead.
    monkeypatch.setattr(runner_module, "reactor", SimpleNamespace(
        callFromThread=lambda f, *a: (f(*a), delivered.set())))
    shell_thread.start()
    try:
        assert delivered.wait(10)
    finally:
        runner.stop()
        shell_thread.join(10)
    assert ran == []
    assert replies[0]["status"] == "error" and replies[0]["error"]["ename"] == "KeyboardInterrupt"
    assert not runner.interrupt()  # idle and nothing handed over: nothing to stop


def test_keyword_lines_skip_the_prefilter_and_come_out_as_ipython_makes_them(
        kernel: EngineKernel) -> None:
    manager = kernel.shell.prefilter_manager
    ipython = type(manager).prefilter_lines.__get__(manager)  # IPython's own
    lines = ["pass", "import os", "  for i in range(3): pass", "x = 1", "ls", "pass  ",
             "if True: y = 2", "lambda: 0", "not x", "print(1)", "cd /tmp", "import os\n"]
    for line in lines:
        assert manager.prefilter_lines(line) == ipython(line), line
    # Magics still work as IPython makes them: "ls" is not a keyword.
    kernel.execute("ls")
    record = kernel.execute("import os; here = os.getcwd()")
    assert record["execution_count"] and kernel.shell.user_ns["here"]

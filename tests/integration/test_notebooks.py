"""Jupyter, for real: a notebook runs in a real ipykernel through nbclient against a
real 2-engine cluster. Its cells' outputs are what a notebook user sees: %px,
%%px and %pxconfig --stream output labelled per engine, HTML and PNG displayed
by engines, tc.map's progress bar, and an engine error failing the cell with
the engines' traceback (so "Run all" stops there)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Cluster

# A 1x1 PNG, displayed by the engines.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
       "RU5ErkJggg==")

CELLS = [
    "%load_ext ipython1.magics",
    "%px import os; os.getpid()",
    "%%px --targets 1\nprint('cell on one')\n6 * 7",
    "%pxconfig --stream",
    "%%px\nimport time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.05)",
    "%pxconfig --nostream",
    "%%px\nimport base64\nfrom IPython.display import HTML, Image, display\n"
    "display(HTML('<b>from an engine</b>'))\n"
    f"display(Image(data=base64.b64decode('{PNG}')))",
    "from ipython1.kernel import client\ntc = client.TaskClient()\n"
    "sum(tc.map(lambda x: x, range(3000), chunksize=10))",
    "%%px --targets 0:2\nprint('printed before')\n1 / 0",
    "print('run all went on')",
]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """Run CELLS in a real kernel; return the executed notebook and the error it raised."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    cluster = Cluster(tmp_path_factory.mktemp("notebook"), profile="default")
    try:
        cluster.start(2)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
        # The kernel's environment: the cluster's profile, and a notebook's defaults
        # (the test suite's IPYTHON1_NONINTERACTIVE would turn progress bars off).
        env = {k: v for k, v in cluster.env.items() if k != "IPYTHON1_NONINTERACTIVE"}
        client = NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(cluster.root)}})
        error = None
        with pytest.MonkeyPatch.context() as patch:
            for key in ("IPYTHON1_DIR", "PYTHONPATH"):
                patch.setenv(key, env[key])
            patch.setenv("IPYTHONDIR", str(cluster.root / "ipython"))
            patch.setenv("JUPYTER_RUNTIME_DIR", str(cluster.root / "jupyter"))
            patch.delenv("IPYTHON1_NONINTERACTIVE", raising=False)
            try:
                client.execute()
            except CellExecutionError as e:
                error = e
        yield nb, error
    finally:
        cluster.stop()


def outputs(nb, index):
    return nb.cells[index].get("outputs", [])


def text(nb, index, name="stdout"):
    return "".join(o.get("text", "") for o in outputs(nb, index)
                   if o["output_type"] == "stream" and o["name"] == name)


def test_px_output_is_labelled_per_engine(notebook):
    nb, _ = notebook
    shown = text(nb, 1)
    assert "[0] Out[" in shown and "[1] Out[" in shown
    assert "[1] In [" in text(nb, 2) and "cell on one" in text(nb, 2)
    assert "]: 42" in text(nb, 2) and "[0] In [" not in text(nb, 2)


def test_pxconfig_stream_labels_live_lines_per_engine(notebook):
    nb, _ = notebook
    streamed = text(nb, 4)
    for engine in (0, 1):
        for i in range(2):  # the last line may land after the cell (see the report)
            assert f"[stdout:{engine}] tick {i}\n" in streamed
    ticks = [line for line in streamed.splitlines() if "tick" in line]
    assert all(re.fullmatch(r"\[stdout:[01]\] tick \d", line) for line in ticks), ticks
    assert len(ticks) <= 6  # live once, not again with the results


def test_html_and_png_displayed_by_engines_reach_the_notebook(notebook):
    nb, _ = notebook
    shown = [o["data"] for o in outputs(nb, 6) if o["output_type"] == "display_data"]
    assert [d["text/html"] for d in shown if "text/html" in d] == ["<b>from an engine</b>"] * 2
    assert [d["image/png"].replace("\n", "") for d in shown if "image/png" in d] == [PNG] * 2


def test_tc_map_draws_a_progress_bar(notebook):
    nb, _ = notebook
    bar = text(nb, 7, "stderr")
    assert "tasks:" in bar and "/3000" in bar, bar
    assert "Warning" not in bar  # no tqdm warning about missing widgets
    assert [o["data"]["text/plain"] for o in outputs(nb, 7)
            if o["output_type"] == "execute_result"] == [str(sum(range(3000)))]


def test_engine_errors_fail_the_cell_with_the_remote_traceback(notebook):
    nb, error = notebook
    assert error is not None and error.ename == "CompositeError"
    (failure,) = [o for o in outputs(nb, 8) if o["output_type"] == "error"]
    assert "[engines 0-1: ZeroDivisionError: division by zero]" in failure["traceback"]
    assert "----> 2 1 / 0" in failure["traceback"]  # the engines' frame, not the client's
    assert not any("concurrent" in line for line in failure["traceback"])
    assert "[stdout:0] printed before\n" in text(nb, 8)  # labelled with its engine
    assert "[stdout:1] printed before\n" in text(nb, 8)
    assert outputs(nb, 9) == []  # "Run all" stopped at the failing cell

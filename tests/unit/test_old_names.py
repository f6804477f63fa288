"""The IPython 0.10 module names keep working after the move into role packages (issue 13)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import ipython1.kernel
from ipython1.kernel import MOVED

KERNEL_DIR = Path(ipython1.kernel.__file__).parent


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_name_is_the_new_module(old: str) -> None:
    new = importlib.import_module(MOVED[old])
    assert importlib.import_module(old) is new
    package, _, name = old.rpartition(".")
    assert getattr(sys.modules[package], name) is new
    assert new.__spec__.name == MOVED[old]  # the alias did not rename it


def test_the_ipython_010_names() -> None:
    from ipython1.kernel import TaskRejectError, asyncclient, client

    assert client.MultiEngineClient.__module__ == "ipython1.client.blocking"
    assert client.TaskClient.__module__ == "ipython1.client.taskfarm"
    assert client.StringTask.__module__ == "ipython1.client.taskspec"
    assert client.CompositeError.__module__ == "ipython1.common.errors"
    assert asyncclient.get_multiengine_client.__module__ == "ipython1.client.connect"
    assert callable(asyncclient.get_task_client)
    assert TaskRejectError.__module__ == "ipython1.common.errors"


def test_the_top_level_old_names() -> None:
    import ipython1.shell

    import ipython1.client.magics
    import ipython1.client.shell
    import ipython1.magics

    assert ipython1.shell is ipython1.client.shell
    # %load_ext ipython1.magics: the extension, with the magics' names as before
    assert callable(ipython1.magics.load_ipython_extension)
    assert ipython1.magics.ParallelMagics is ipython1.client.magics.ParallelMagics


def test_patching_an_old_name_patches_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipython1.engine import kernel

    monkeypatch.setattr("ipython1.kernel.engine.MAX_HISTORY", 3)
    assert kernel.MAX_HISTORY == 3


def test_python_m_runs_the_new_modules_code() -> None:
    # runpy (python -m ipython1.shell) asks the old name's loader for the code.
    finder = next(f for f in sys.meta_path if type(f).__name__ == "_OldName")
    code = finder.find_spec("ipython1.shell").loader.get_code("ipython1.shell")
    assert Path(code.co_filename).parts[-2:] == ("client", "shell.py")


def test_no_old_name_hides_a_file() -> None:
    files = {p.stem for p in KERNEL_DIR.glob("*.py")}
    assert files == {"__init__", "commandchannel", "datachannel"}
    for old in MOVED:
        assert not KERNEL_DIR.parent.parent.joinpath(*old.split(".")).with_suffix(".py").exists()


def test_ipython1_itself_imports_no_old_name() -> None:
    # kernel/ re-exports the client, the controller and the engine: a module that imports
    # it (say the transport) would load every role's code.
    import ast

    package = KERNEL_DIR.parent
    old = [name for name in MOVED if name.startswith("ipython1.kernel.")] + ["ipython1.kernel"]
    found = []
    for path in package.rglob("*.py"):
        if path.parent == KERNEL_DIR or path == package / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == o or n.startswith(o + ".") for n in names for o in old):
                found.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not found, f"old names imported: {found}"

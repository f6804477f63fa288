"""Every Python example of README.md and docs/**/*.md runs as written, against a
real 4-engine cluster of the default profile (as the docs assume), one page
at a time, its blocks in order in one IPython shell.

A block that cannot run here is marked in its info string with the reason,
``python no-run: needs an MPI cluster``; nothing is skipped silently.
New pages are picked up as they are added.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.docs_blocks import ROOT, pages, python_blocks

RUNNER = str(Path(__file__).with_name("docs_runner.py"))
PAGES = [p for p in pages() if any(block.runs for block in python_blocks(p))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The default profile's cluster, with users alice and bob (docs/collaboration.md)."""
    cluster = Cluster(tmp_path_factory.mktemp("docs"), profile="default")
    try:
        cluster.start(4)
        cluster.furls = {}
        for name in ("alice", "bob"):
            proc = cluster.ipcluster("adduser", name)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            cluster.furls[name] = proc.stdout.strip()
        yield cluster
    finally:
        cluster.stop()


def test_every_no_run_block_says_why():
    for page in pages():
        for block in python_blocks(page):
            if not block.runs:
                assert block.reason, (f"{page.relative_to(ROOT)}:{block.line}: say why the "
                                      "block cannot run: ```python no-run: REASON")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_python_examples_of_the_page_run(page, cluster, tmp_path):
    for name, path in cluster.furls.items():  # as the docs' "alice.furl"
        shutil.copy(path, tmp_path / f"{name}.furl")
    proc = subprocess.run([sys.executable, RUNNER, str(page)], cwd=tmp_path, env=cluster.env,
                          capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode == 0, (
            f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}\nAn example of "
            f"{page.relative_to(ROOT)} failed (the line above names it). Fix the example, "
            "or mark its block ```python no-run: REASON if it cannot run against a local "
            "4-engine cluster.")
    finally:
        mec = cluster.client(timeout=30)  # the next page starts from idle, empty engines
        mec.interrupt()
        mec.clear_queue()
        mec.reset()
        mec.close()

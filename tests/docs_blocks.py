"""The fenced Python blocks of README.md and docs/**/*.md, and which of them run.

A block whose info string is ``python`` (or ``py``, ``ipython``) is an example
that tests/integration/test_docs_examples.py runs against a real cluster. A
block that cannot run there says so in its info string, with the reason:

    ```python no-run: needs an MPI cluster (ipcluster start --mpi)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ("python", "py", "ipython")
NO_RUN = "no-run"
_FENCE = re.compile(r"^(```+|~~~+)[ \t]*([^\n]*)\n(.*?)^\1[ \t]*$", re.S | re.M)


@dataclass
class Block:
    line: int  # of the opening fence
    info: str
    code: str

    @property
    def runs(self) -> bool:
        words = self.info.split()
        return not (len(words) > 1 and words[1].rstrip(":") == NO_RUN)

    @property
    def reason(self) -> str:
        """Why a no-run block does not run ('' if none is given)."""
        return self.info.partition(NO_RUN)[2].lstrip(": ").strip()


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(page: Path) -> list[Block]:
    """Return the page's fenced blocks whose language is Python."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        info = match.group(2).strip()
        words = info.split()
        if words and words[0].lower() in PYTHON:
            blocks.append(Block(text.count("\n", 0, match.start()) + 1, info, match.group(3)))
    return blocks

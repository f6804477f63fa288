"""Run a docs page's Python examples in order in one IPython shell (used by test_docs_examples).

    python docs_runner.py PAGE.md

Each runnable block runs as an IPython cell (magics work), in the page's
order, in one namespace. The first that raises ends the run with exit status
1 and a line ``FAILED PAGE:LINE``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.docs_blocks import python_blocks  # noqa: E402


def main(page: str) -> int:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    for block in python_blocks(Path(page)):
        if not block.runs:
            continue
        print(f"---- {page}:{block.line}", flush=True)
        result = shell.run_cell(block.code)
        sys.stdout.flush()
        if not result.success:
            print(f"FAILED {page}:{block.line}: "
                  f"{result.error_before_exec or result.error_in_exec!r}", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

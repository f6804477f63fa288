#!/usr/bin/env python3
"""Run the whole test suite: python3 scripts/test.py [pytest args]

Sets itself up on first run (.venv with ipython1[test,mpi] installed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bootstrap  # noqa: E402

bootstrap.reexec_in_venv("test,mpi")

os.chdir(bootstrap.ROOT)
os.environ.setdefault("IPYTHON1_NONINTERACTIVE", "1")
args = sys.argv[1:]
# Paths given (tests/unit, tests/integration/test_x.py::test_y) replace the default "tests".
paths = [a for a in args if not a.startswith("-") and os.path.exists(a.split("::")[0])]
os.execv(sys.executable, [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                          *([] if paths else ["tests"]), *args])

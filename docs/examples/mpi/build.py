"""Build liballreduce.so from allreduce.c with the mpicc that matches mpi4py.

    python docs/examples/mpi/build.py [OUTPUT]

mpicc is looked for beside the running python (a virtualenv with the mpich
wheel), then on PATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ipython1.engine.mpi import build_shared_library

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Compile allreduce.c; print the library's path."""
    output = Path(argv[1]) if len(argv) > 1 else HERE / "liballreduce.so"
    print(build_shared_library(HERE / "allreduce.c", output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

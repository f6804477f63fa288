"""Call the MPI_Allreduce in liballreduce.so from Python through ctypes.

Run it on every engine (or under ``mpiexec -n 4 python allreduce.py``):

    from mpi4py import MPI
    lib = load("docs/examples/mpi/liballreduce.so")
    allreduce_sum(lib, float(MPI.COMM_WORLD.rank), MPI.COMM_WORLD)   # 6.0 on 4 ranks

The communicator crosses into C as its Fortran handle, ``comm.py2f()``, and
allreduce.c turns it back with MPI_Comm_f2c; that works for MPICH and Open MPI.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(path: str | Path = HERE / "liballreduce.so") -> ctypes.CDLL:
    """Load the library and declare its C signatures."""
    lib = ctypes.CDLL(str(path))
    lib.ipy1_allreduce_sum.argtypes = [ctypes.c_double, ctypes.c_int]
    lib.ipy1_allreduce_sum.restype = ctypes.c_double
    lib.ipy1_allreduce_sum_array.argtypes = [
        ctypes.POINTER(ctypes.c_double),
        ctypes.POINTER(ctypes.c_double),
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.ipy1_allreduce_sum_array.restype = ctypes.c_int
    return lib


def allreduce_sum(lib: ctypes.CDLL, value: float, comm: Any) -> float:
    """Sum value over every rank of the mpi4py communicator comm, in C."""
    return float(lib.ipy1_allreduce_sum(value, comm.py2f()))


def allreduce_sum_array(lib: ctypes.CDLL, values: Any, comm: Any) -> Any:
    """Sum a float64 NumPy array elementwise over every rank, in C."""
    import numpy as np

    values = np.ascontiguousarray(values, dtype=np.float64)
    out = np.empty_like(values)
    pointer = ctypes.POINTER(ctypes.c_double)
    code = lib.ipy1_allreduce_sum_array(
        values.ctypes.data_as(pointer),
        out.ctypes.data_as(pointer),
        values.size,
        comm.py2f(),
    )
    if code != 0:
        raise RuntimeError(f"MPI_Allreduce failed with error code {code}")
    return out


if __name__ == "__main__":
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    library = load(sys.argv[1] if len(sys.argv) > 1 else HERE / "liballreduce.so")
    total = allreduce_sum(library, float(world.rank), world)
    expected = world.size * (world.size - 1) / 2
    print(f"rank {world.rank}/{world.size}: sum {total} (expected {expected})")
    sys.exit(0 if total == expected else 1)

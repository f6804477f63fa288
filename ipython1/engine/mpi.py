"""MPI support for engines: initialise mpi4py, find and drive mpiexec and mpicc.

Only engines initialise MPI.  This module never imports mpi4py at import time,
so the controller, ipcluster and clients can import it safely; `initialize`
imports mpi4py when an engine asks for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from ipython1.common.errors import KernelError, MPIUnavailable
from ipython1.common.processes import python_module

__all__ = [
    "BuildFailed",
    "INSTALL_HINT",
    "MPIUnavailable",
    "build_shared_library",
    "find_mpicc",
    "find_mpiexec",
    "flavor_from_version",
    "initialize",
    "launcher_rank_from_env",
    "launcher_size_from_env",
    "mpi4py_installed",
    "mpiexec_command",
    "mpiexec_flavor",
]


class BuildFailed(KernelError):
    """The MPI compiler wrapper failed to build a shared library."""


INSTALL_HINT = "pip install 'ipython1[mpi]' (installs mpich and mpi4py)"

SUPPORTED_KINDS = ("mpi4py",)

# Rank variables set by launchers before MPI_Init, most specific first.
RANK_VARIABLES = (
    "PMI_RANK",  # MPICH Hydra, Intel MPI
    "OMPI_COMM_WORLD_RANK",  # Open MPI mpiexec
    "PMIX_RANK",  # Open MPI 5 (PRRTE), srun --mpi=pmix
    "MV2_COMM_WORLD_RANK",  # MVAPICH2
)
SIZE_VARIABLES = (
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
)

ENGINE_MODULE = "ipython1.scripts.ipengine"


def _first_int(environ: Mapping[str, str], names: Sequence[str]) -> int | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def launcher_rank_from_env(environ: Mapping[str, str]) -> int | None:
    """Return the rank an MPI launcher gave this process, or None outside one.

    It is known before MPI is initialised, so an engine can log or order itself
    early; after `initialize` trust the rank that MPI reports.
    """
    return _first_int(environ, RANK_VARIABLES)


def launcher_size_from_env(environ: Mapping[str, str]) -> int | None:
    """Return the job size an MPI launcher gave this process, or None."""
    return _first_int(environ, SIZE_VARIABLES)


def _library_version(text: str) -> str:
    # MPICH's version string spans many lines, the first says what it is;
    # Open MPI's ends in a NUL.
    for line in text.replace("\x00", "").splitlines():
        if line.strip():
            return " ".join(line.split())
    return "unknown MPI library"


def initialize(kind: str = "mpi4py") -> dict[str, int | str]:
    """Initialise MPI in this process; return its rank, size, job name and library.

    Importing ``mpi4py.MPI`` calls MPI_Init_thread (thread level "multiple"),
    so user code on the engine's shell thread may call MPI.  An MPI_Init that
    fails inside the MPI library usually aborts the process rather than raise.
    """
    if kind not in SUPPORTED_KINDS:
        raise MPIUnavailable(f"unknown MPI kind {kind!r}: use one of {', '.join(SUPPORTED_KINDS)}")
    try:
        import mpi4py
    except ImportError as e:
        raise MPIUnavailable(f"mpi4py is not installed: {INSTALL_HINT}") from e
    mpi4py.rc.thread_level = "multiple"
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MPIUnavailable(
            f"mpi4py could not load an MPI library ({first}): {INSTALL_HINT}, "
            "or install MPICH or Open MPI"
        ) from e
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    comm = MPI.COMM_WORLD
    # A name shared by every rank of this job, so the controller can tell
    # which engines fall together when one rank dies.
    job = comm.bcast(uuid.uuid4().hex[:12] if comm.Get_rank() == 0 else None, root=0)
    return {
        "mpi_rank": comm.Get_rank(),
        "mpi_size": comm.Get_size(),
        "mpi_job": job,
        "mpi_library": _library_version(MPI.Get_library_version()),
    }


def mpi4py_installed() -> bool:
    """Tell whether mpi4py can be found, without importing it (nor MPI)."""
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


def _find_tool(
    names: Sequence[str],
    explicit: str | None,
    executable: str | None,
    path: str | None,
    what: str,
) -> str:
    if explicit:
        found = shutil.which(explicit, path=path) if os.sep not in explicit else None
        if found:
            return found
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return os.path.abspath(explicit)
        raise MPIUnavailable(f"{what} {explicit!r} is not an executable file")
    # The interpreter's own bin/ first: in a virtualenv that is where the
    # mpich wheel puts mpiexec and mpicc, matching the libmpi mpi4py loads.
    # sys.executable is not resolved: a venv's python is a symlink out of it.
    bindir = Path(executable or sys.executable).parent
    for name in names:
        candidate = bindir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    raise MPIUnavailable(
        f"no {' or '.join(names)} found in {bindir} or on PATH: {INSTALL_HINT}, "
        f"install MPICH or Open MPI, or give the path of {what}"
    )


def find_mpiexec(
    explicit: str | None = None,
    *,
    executable: str | None = None,
    path: str | None = None,
) -> str:
    """Return the mpiexec to use: explicit, else beside sys.executable, else on PATH."""
    return _find_tool(("mpiexec", "mpirun"), explicit, executable, path, "--mpiexec")


def find_mpicc(
    explicit: str | None = None,
    *,
    executable: str | None = None,
    path: str | None = None,
) -> str:
    """Return the mpicc to use, searched like `find_mpiexec`."""
    return _find_tool(("mpicc",), explicit, executable, path, "mpicc")


def flavor_from_version(text: str) -> str:
    """Name the MPI implementation from `mpiexec --version` output."""
    if "Open MPI" in text or "OpenRTE" in text:
        return "openmpi"
    if "Intel(R) MPI" in text:
        return "intel"
    if "HYDRA" in text or "MPICH" in text:
        return "mpich"
    return "unknown"


def mpiexec_flavor(mpiexec: str, timeout: float = 30.0) -> str:
    """Run `mpiexec --version` and name its implementation."""
    try:
        done = subprocess.run(
            [mpiexec, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MPIUnavailable(f"cannot run {mpiexec} --version: {e}") from e
    return flavor_from_version(done.stdout + done.stderr)


def mpiexec_command(
    n: int,
    engine_argv: list[str],
    mpiexec: str,
    mpi_args: list[str],
    *,
    flavor: str | None = None,
    python: str | None = None,
    as_root: bool | None = None,
) -> list[str]:
    """Build the command line that starts n engines under mpiexec.

    engine_argv are the ipengine options; ``--mpi mpi4py`` is added unless
    given.  Open MPI refuses root without ``--allow-run-as-root`` and more
    ranks than cores without ``--oversubscribe``; both are added for it only.
    flavor defaults to `mpiexec_flavor` (runs mpiexec), as_root to euid 0.
    """
    if n < 1:
        raise ValueError(f"need at least one engine, not {n}")
    if flavor is None:
        flavor = mpiexec_flavor(mpiexec)
    if as_root is None:
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    command = [mpiexec, "-n", str(n)]
    if flavor == "openmpi":
        if as_root and "--allow-run-as-root" not in mpi_args:
            command.append("--allow-run-as-root")
        if not any(a in ("--oversubscribe", "--nooversubscribe") for a in mpi_args):
            command.append("--oversubscribe")
    command += list(mpi_args)
    command += python_module(ENGINE_MODULE, *engine_argv, python=python)
    if "--mpi" not in engine_argv and not any(a.startswith("--mpi=") for a in engine_argv):
        command += ["--mpi", "mpi4py"]
    return command


def build_shared_library(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    mpicc: str | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Compile C source into a shared library with mpicc; return its path.

    Use the mpicc of the same MPI that mpi4py loads (the default search finds
    the one beside sys.executable first): two MPI libraries in one process crash.
    """
    compiler = find_mpicc(mpicc)
    out = Path(output)
    command = [
        compiler,
        "-shared",
        "-fPIC",
        "-O2",
        "-o",
        str(out),
        str(source),
        *extra_args,
    ]
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildFailed(
            f"{' '.join(command)} exited with {done.returncode}:\n"
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return out

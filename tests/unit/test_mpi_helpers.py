"""Tests for ipython1.engine.mpi's pure helpers; no mpiexec, no MPI library."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ipython1.common.processes import SAFE_PATH_FLAGS
from ipython1.engine import mpi
from ipython1.engine.mpi import MPIUnavailable


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# launcher environment


@pytest.mark.parametrize(
    "environ, rank",
    [
        ({"PMI_RANK": "3", "PMI_SIZE": "4"}, 3),
        ({"OMPI_COMM_WORLD_RANK": "2"}, 2),
        ({"PMIX_RANK": "1"}, 1),
        ({"MV2_COMM_WORLD_RANK": "5"}, 5),
        ({"PMI_RANK": "0", "PMIX_RANK": "7"}, 0),
        ({"PMI_RANK": "", "OMPI_COMM_WORLD_RANK": " 4 "}, 4),
        ({"PMI_RANK": "x", "PMIX_RANK": "-1"}, None),
        ({"HOME": "/root"}, None),
    ],
)
def test_launcher_rank_from_env(environ: dict[str, str], rank: int | None) -> None:
    assert mpi.launcher_rank_from_env(environ) == rank


def test_launcher_size_from_env() -> None:
    assert mpi.launcher_size_from_env({"PMI_SIZE": "4"}) == 4
    assert mpi.launcher_size_from_env({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert mpi.launcher_size_from_env({}) is None


# mpiexec flavour and command line


@pytest.mark.parametrize(
    "text, flavor",
    [
        ("mpiexec (Open MPI) 5.0.11\n\nReport bugs to ...", "openmpi"),
        ("mpirun (Open MPI) 4.1.4\n", "openmpi"),
        ("mpiexec (OpenRTE) 3.1.3\n", "openmpi"),
        ("HYDRA build details:\n    Version:   5.0.2\n", "mpich"),
        ("Intel(R) MPI Library for Linux* OS, Version 2021.11", "intel"),
        ("something else", "unknown"),
    ],
)
def test_flavor_from_version(text: str, flavor: str) -> None:
    assert mpi.flavor_from_version(text) == flavor


def test_mpiexec_flavor_runs_version(tmp_path: Path) -> None:
    fake = _script(tmp_path / "mpiexec", 'echo "mpiexec (Open MPI) 4.1.4"')
    assert mpi.mpiexec_flavor(str(fake)) == "openmpi"


def test_mpiexec_flavor_missing_program(tmp_path: Path) -> None:
    with pytest.raises(MPIUnavailable, match="--version"):
        mpi.mpiexec_flavor(str(tmp_path / "nothing"))


def test_mpiexec_command_mpich() -> None:
    command = mpi.mpiexec_command(
        4,
        ["--furl-file", "e.furl"],
        "/v/bin/mpiexec",
        ["-genv", "A", "1"],
        flavor="mpich",
        python="/v/bin/python",
        as_root=True,
    )
    assert command == [
        "/v/bin/mpiexec",
        "-n",
        "4",
        "-genv",
        "A",
        "1",
        "/v/bin/python",
        *SAFE_PATH_FLAGS,
        "-m",
        "ipython1.scripts.ipengine",
        "--furl-file",
        "e.furl",
        "--mpi",
        "mpi4py",
    ]


def test_mpiexec_command_openmpi_as_root() -> None:
    command = mpi.mpiexec_command(2, [], "mpiexec", [], flavor="openmpi", python="py", as_root=True)
    assert command == [
        "mpiexec",
        "-n",
        "2",
        "--allow-run-as-root",
        "--oversubscribe",
        "py",
        *SAFE_PATH_FLAGS,
        "-m",
        "ipython1.scripts.ipengine",
        "--mpi",
        "mpi4py",
    ]


def test_mpiexec_command_openmpi_not_root_keeps_user_flags() -> None:
    command = mpi.mpiexec_command(
        2,
        ["--mpi=mpi4py"],
        "mpiexec",
        ["--nooversubscribe"],
        flavor="openmpi",
        python="py",
        as_root=False,
    )
    assert command == [
        "mpiexec",
        "-n",
        "2",
        "--nooversubscribe",
        "py",
        *SAFE_PATH_FLAGS,
        "-m",
        "ipython1.scripts.ipengine",
        "--mpi=mpi4py",
    ]


def test_mpiexec_command_defaults_to_this_python() -> None:
    command = mpi.mpiexec_command(1, [], "mpiexec", [], flavor="mpich")
    assert command[3:6 + len(SAFE_PATH_FLAGS)] == [sys.executable, *SAFE_PATH_FLAGS, "-m",
                                       "ipython1.scripts.ipengine"]


def test_mpiexec_command_needs_an_engine() -> None:
    with pytest.raises(ValueError):
        mpi.mpiexec_command(0, [], "mpiexec", [], flavor="mpich")


# finding mpiexec and mpicc


def test_find_mpiexec_prefers_the_interpreters_bin(tmp_path: Path) -> None:
    venv = _script(tmp_path / "venv" / "bin" / "mpiexec", "true")
    _script(tmp_path / "path" / "mpiexec", "true")
    found = mpi.find_mpiexec(
        executable=str(tmp_path / "venv" / "bin" / "python"),
        path=str(tmp_path / "path"),
    )
    assert found == str(venv)


def test_find_mpiexec_falls_back_to_path(tmp_path: Path) -> None:
    on_path = _script(tmp_path / "path" / "mpirun", "true")
    found = mpi.find_mpiexec(
        executable=str(tmp_path / "venv" / "bin" / "python"),
        path=str(tmp_path / "path"),
    )
    assert found == str(on_path)


def test_find_mpiexec_explicit(tmp_path: Path) -> None:
    explicit = _script(tmp_path / "my" / "mpiexec.hydra", "true")
    assert mpi.find_mpiexec(str(explicit), path="") == str(explicit)
    with pytest.raises(MPIUnavailable, match="not an executable"):
        mpi.find_mpiexec(str(tmp_path / "my" / "missing"), path="")


def test_find_mpiexec_missing_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(MPIUnavailable) as info:
        mpi.find_mpiexec(executable=str(tmp_path / "python"), path=str(tmp_path))
    message = str(info.value)
    assert "mpiexec" in message
    assert "pip install 'ipython1[mpi]'" in message


def test_find_mpicc(tmp_path: Path) -> None:
    mpicc = _script(tmp_path / "bin" / "mpicc", "true")
    found = mpi.find_mpicc(executable=str(tmp_path / "bin" / "python"), path="")
    assert found == str(mpicc)


# building a shared library (with a stand-in for mpicc)


def test_build_shared_library(tmp_path: Path) -> None:
    # The stand-in writes its arguments to the -o file, so they can be checked.
    fake = _script(
        tmp_path / "mpicc",
        'while [ "$1" != -o ]; do shift; done; out=$2; shift 2; echo "$@" > "$out"',
    )
    out = mpi.build_shared_library(tmp_path / "a.c", tmp_path / "liba.so", mpicc=str(fake))
    assert out == tmp_path / "liba.so"
    assert out.read_text().split() == [str(tmp_path / "a.c")]


def test_build_shared_library_failure_shows_compiler_output(tmp_path: Path) -> None:
    fake = _script(tmp_path / "mpicc", 'echo "a.c:1: error: boom" >&2; exit 1')
    with pytest.raises(mpi.BuildFailed, match="boom"):
        mpi.build_shared_library(tmp_path / "a.c", tmp_path / "a.so", mpicc=str(fake))


# initialize, with mpi4py missing or faked


def test_initialize_without_mpi4py(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(MPIUnavailable) as info:
        mpi.initialize()
    assert str(info.value) == (
        "mpi4py is not installed: pip install 'ipython1[mpi]' (installs mpich and mpi4py)"
    )


def _fake_mpi4py(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    package = types.ModuleType("mpi4py")
    package.rc = types.SimpleNamespace(thread_level="funneled")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mpi4py", package)
    return package


def test_initialize_without_an_mpi_library(monkeypatch: pytest.MonkeyPatch) -> None:
    package = _fake_mpi4py(monkeypatch)
    # What mpi4py 4 raises when it finds no libmpi.
    error = RuntimeError("cannot load MPI library\nlibmpi.so: cannot open")
    package.__getattr__ = lambda name: (_ for _ in ()).throw(error)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    with pytest.raises(MPIUnavailable, match="could not load an MPI library"):
        mpi.initialize()


def test_initialize_reports_rank_size_library(monkeypatch: pytest.MonkeyPatch) -> None:
    package = _fake_mpi4py(monkeypatch)
    world = types.SimpleNamespace(Get_rank=lambda: 2, Get_size=lambda: 4,
                                  bcast=lambda value, root: "job-of-rank-0")
    fake = types.ModuleType("mpi4py.MPI")
    fake.COMM_WORLD = world  # type: ignore[attr-defined]
    fake.THREAD_MULTIPLE = 3  # type: ignore[attr-defined]
    fake.Is_initialized = lambda: True  # type: ignore[attr-defined]
    fake.Get_library_version = (  # type: ignore[attr-defined]
        lambda: "Open MPI v5.0.11, package: x\x00"
    )
    package.MPI = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", fake)
    assert mpi.initialize() == {
        "mpi_rank": 2,
        "mpi_size": 4,
        "mpi_job": "job-of-rank-0",
        "mpi_library": "Open MPI v5.0.11, package: x",
    }
    assert package.rc.thread_level == "multiple"  # type: ignore[attr-defined]


def test_library_version_takes_the_first_line() -> None:
    text = "MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25\n"
    assert mpi._library_version(text) == "MPICH Version: 5.0.2"


def test_initialize_unknown_kind() -> None:
    with pytest.raises(MPIUnavailable, match="unknown MPI kind 'boost'"):
        mpi.initialize("boost")


def test_importing_the_module_does_not_import_mpi4py() -> None:
    code = "import sys, ipython1.engine.mpi; sys.exit(1 if 'mpi4py' in sys.modules else 0)"
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_ipcluster_preflight_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipython1.scripts import ipcluster

    monkeypatch.setattr(mpi, "find_mpiexec", lambda explicit=None: "/usr/bin/mpiexec")
    monkeypatch.setattr(mpi, "mpi4py_installed", lambda: False)
    hint = r"mpi4py is not installed: pip install 'ipython1\[mpi\]'"
    with pytest.raises(MPIUnavailable, match=hint):
        ipcluster._mpi_preflight(2, None, "")


def test_mpi4py_installed_does_not_import_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    seen: list[str] = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: seen.append(name))
    assert mpi.mpi4py_installed() is False and seen == ["mpi4py"]

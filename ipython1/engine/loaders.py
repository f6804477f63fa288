"""Load an engine's share of an on-disk data set into its namespace.

Runs on the engine (through `apply`): the bytes go from the engine's disk
into the engine's memory and never cross the client or the controller.

A *block* is what an engine holds for a distributed array: one NumPy array,
or, when several npy files are memory-mapped, a list of arrays (one per file,
joined along axis 0) so that nothing is copied.
"""

from __future__ import annotations

import glob
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["LOADERS", "PartitionFileError", "describe", "expand", "load", "survey",
           "user_namespace"]


class PartitionFileError(OSError):
    """A file of the data set is missing or cannot be read on this engine."""


def user_namespace() -> dict[str, Any]:
    """Return the namespace of the engine's IPython shell (where %px runs)."""
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.instance().user_ns  # type: ignore[no-any-return]


def expand(pattern: str) -> list[str]:
    """Return the files matching a glob pattern here, sorted (so every engine agrees)."""
    return sorted(glob.glob(os.path.expanduser(pattern)))


def survey(paths: str | Sequence[str]) -> list[tuple[str, int]]:
    """Return (path, size in bytes) of a glob pattern's files or of paths; -1 if unknown."""
    names = expand(paths) if isinstance(paths, str) else list(paths)
    out = []
    for name in names:
        try:
            out.append((name, os.path.getsize(name)))
        except OSError:
            out.append((name, -1))  # the load names it, on the engine that gets it
    return out


def _npy_header(path: str) -> tuple[tuple[int, ...], np.dtype[Any], bool, int]:
    """Read an npy header: shape, dtype, Fortran order, and where the data starts."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        return tuple(shape), dtype, fortran, f.tell()


def _load_npy(paths: Sequence[str], mmap: bool) -> Any:
    """Memory-map each file, or read them all into one array with no extra copy."""
    if mmap:
        parts = [np.load(p, mmap_mode="r") for p in paths]
        return parts[0] if len(parts) == 1 else parts
    headers = [_npy_header(p) for p in paths]
    if any(fortran or dtype.hasobject for _, dtype, fortran, _ in headers):
        return _concatenate([np.load(p) for p in paths], paths)
    first_shape, dtype = headers[0][0], headers[0][1]
    for path, (shape, other, _, _) in zip(paths, headers, strict=True):
        _check_compatible(path, shape, other, first_shape, dtype)
    rows = sum(shape[0] for shape, *_ in headers)
    out = np.empty((rows, *first_shape[1:]), dtype=dtype)
    start = 0
    for path, (shape, _, _, offset) in zip(paths, headers, strict=True):
        stop = start + shape[0]
        if out[start:stop].nbytes == 0:
            continue
        view = memoryview(out[start:stop]).cast("B")
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            got = 0
            while got < len(view):  # read straight into the block: no temporary
                n = f.readinto(view[got:])
                if not n:
                    raise PartitionFileError(f"{path} is truncated: {got} of {len(view)} "
                                             "data bytes")
                got += n
        start = stop
    return out


def _load_zarr(path: str, **options: Any) -> Any:
    import zarr

    return zarr.open(path, mode="r", **options)[...]


def _load_hdf5(path: str, dataset: str | None = None) -> Any:
    import h5py

    with h5py.File(path, "r") as f:
        if dataset is None:
            names = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
            if len(names) != 1:
                raise PartitionFileError(f"{path} holds datasets {names}: name one with "
                                         "dataset=...")
            dataset = names[0]
        return f[dataset][...]


LOADERS: dict[str, Callable[..., Any]] = {"zarr": _load_zarr, "hdf5": _load_hdf5}


def _check_compatible(path: str, shape: tuple[int, ...], dtype: Any,
                      first_shape: tuple[int, ...], first_dtype: Any) -> None:
    if len(shape) == 0:
        raise PartitionFileError(f"{path} holds a 0-d array: nothing to split into rows")
    if shape[1:] != first_shape[1:] or dtype != first_dtype:
        raise PartitionFileError(f"{path} holds {dtype}{list(shape)}, the first file "
                                 f"{first_dtype}{list(first_shape)}: rows do not match")


def _concatenate(parts: list[Any], paths: Sequence[str]) -> Any:
    arrays = [np.asarray(p) for p in parts]
    for path, a in zip(paths, arrays, strict=True):
        _check_compatible(path, a.shape, a.dtype, arrays[0].shape, arrays[0].dtype)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _read(paths: Sequence[str], loader: str | Callable[..., Any], mmap: bool,
          options: dict[str, Any]) -> Any:
    if loader == "npy":
        return _load_npy(paths, mmap)
    load_one = LOADERS[loader] if isinstance(loader, str) else loader
    return _concatenate([load_one(p, **options) for p in paths], paths)


def _describe_file_error(path: str, error: BaseException) -> str:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"cannot load {path} on host {socket.gethostname()}: {type(error).__name__}: {reason}"


def load(key: str, paths: Sequence[str], loader: str | Callable[..., Any] = "npy",
         mmap: bool = False, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load paths (in order, joined along axis 0) into the namespace under key.

    Raises PartitionFileError naming the first file that is missing or
    unreadable; returns what `describe` says of the new block.
    """
    if isinstance(loader, str) and loader != "npy" and loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}: use npy, zarr, hdf5 or a callable")
    for path in paths:
        if not os.access(path, os.R_OK):
            error = OSError(2 if not os.path.exists(path) else 13,
                            "No such file or directory" if not os.path.exists(path)
                            else "Permission denied")
            raise PartitionFileError(_describe_file_error(path, error))
    try:
        block = _read(paths, loader, mmap, options or {})
    except PartitionFileError:
        raise
    except Exception as e:
        # Name the file: load each alone to find the one at fault.
        for path in paths:
            try:
                _read([path], loader, mmap, options or {})
            except Exception as one:
                raise PartitionFileError(_describe_file_error(path, one)) from one
        raise PartitionFileError(_describe_file_error(", ".join(paths), e)) from e
    user_namespace()[key] = block
    return describe(key)


def describe(key: str) -> dict[str, Any]:
    """Say what the block under key is: rows, trailing shape, dtype, chunk lengths."""
    ns = user_namespace()
    if key not in ns:
        raise NameError(f"name {key!r} is not defined on host {socket.gethostname()}")
    block = ns[key]
    chunks = block if isinstance(block, list) else [block]
    if not chunks or not all(hasattr(c, "shape") and hasattr(c, "dtype") and c.ndim >= 1
                             for c in chunks):
        raise TypeError(f"{key!r} is a {type(block).__name__}, not an array with rows "
                        "(or a list of them)")
    return {"rows": int(sum(c.shape[0] for c in chunks)), "trailing": list(chunks[0].shape[1:]),
            "dtype": chunks[0].dtype.str, "chunks": [int(c.shape[0]) for c in chunks]}


def empty(key: str, trailing: list[int], dtype: str) -> dict[str, Any]:
    """Bind key to an array of no rows (an engine that got no file)."""
    user_namespace()[key] = np.empty((0, *trailing), dtype=np.dtype(dtype))
    return describe(key)

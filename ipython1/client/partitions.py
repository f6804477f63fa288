"""Engines load their own partitions of an on-disk data set.

`assign_files` is pure: which engine loads which files (contiguous runs, as
even as can be, so the rows come out in file order). `load_partitions`
sends each engine its list of paths; the engine reads them itself
(`ipython1.engine.loaders`), so no byte of the data passes the client or the
controller. It fires with the layout: which engine holds which rows.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

from ipython1.client.each import apply_each
from ipython1.common import scatter as scatter_mod
from ipython1.common.errors import CompositeError, PartitionLoadError, RemoteError
from ipython1.engine import loaders

__all__ = ["assign_files", "layout_from_rows", "load_partitions"]


def assign_files(paths: Sequence[str], ids: Sequence[int],
                 sizes: Sequence[int] | None = None) -> dict[int, list[str]]:
    """Give each engine a contiguous run of paths, as even as can be.

    Without sizes the runs' lengths differ by at most one. With the files'
    sizes (all known), each run ends at the file whose cumulative size comes
    nearest to the engine's even share of the total, so engines get about
    the same number of bytes.
    """
    if not ids:
        raise ValueError("no engines to load the files on")
    if sizes is None or len(paths) <= len(ids) or min(sizes, default=0) < 0 or not sum(sizes):
        parts = scatter_mod.partitions(list(paths), len(ids))
        return {e: list(part) for e, part in zip(ids, parts, strict=True)}
    total = sum(sizes)
    cumulative = list(itertools.accumulate(sizes))
    out, start = {}, 0
    for k, e in enumerate(ids):
        left = len(ids) - k - 1  # engines after this one: leave each at least one file
        if left == 0:
            stop = len(paths)
        else:
            target = total * (k + 1) / len(ids)
            stop = bisect.bisect_left(cumulative, target, start)
            if stop < len(paths) and (stop == start or abs(cumulative[stop] - target) <=
                                      abs(cumulative[stop - 1] - target)):
                stop += 1  # include the file that crosses the share, if that is nearer
            stop = max(start + 1, min(stop, len(paths) - left))
        out[e] = list(paths[start:stop])
        start = stop
    return out


def layout_from_rows(rows: dict[int, int], ids: Sequence[int]) -> dict[int, range]:
    """Turn each engine's row count into its global rows, in engine order."""
    out, start = {}, 0
    for e in ids:
        out[e] = range(start, start + rows[e])
        start += rows[e]
    return out


def _load_error(key: str, failure: Any) -> Any:
    error = failure.value
    errors = error.errors if isinstance(error, CompositeError) else [error]
    if not all(isinstance(e, RemoteError) for e in errors):
        return failure
    lines = [f"engine {e.engine_id}: {e.evalue}" for e in errors]
    raise PartitionLoadError(f"could not load {key!r}:\n  " + "\n  ".join(lines),
                             [e.engine_id for e in errors]) from error


@defer.inlineCallbacks
def load_partitions(client: Any, key: str, paths: Any, loader: Any = "npy",
                    targets: Any = "all", mmap: bool = False,
                    options: dict[str, Any] | None = None) -> Any:
    """Have the targets load paths into key, each its share; fire with the layout.

    paths: a list of files, a glob pattern (expanded on the first target,
    sorted), or {engine_id: [files]} to choose the assignment. Files are
    dealt out in contiguous runs of about equal bytes (sizes as the first
    target sees them). The layout is
    {engine_id: {"rows": range, "files": [...]}} in engine order; an engine
    given no file holds an array of no rows with the others' dtype.
    """
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"cannot load into {key!r}: not a valid Python name")
    if not (isinstance(loader, str) or callable(loader)):
        raise TypeError(f"loader must be 'npy', 'zarr', 'hdf5' or a callable, not {loader!r}")
    ids = yield client._ids(targets)
    if isinstance(paths, os.PathLike):
        paths = os.fspath(paths)
    if isinstance(paths, dict):
        assignment = {e: list(paths.get(e, [])) for e in ids}
    else:
        pattern = paths if isinstance(paths, str) else None
        found = yield client.apply(loaders.survey, pattern or [str(p) for p in paths],
                                   targets=ids[0])
        if not found:
            raise PartitionLoadError(f"could not load {key!r}: no file matches {pattern!r} "
                                     f"on engine {ids[0]}" if pattern else
                                     f"could not load {key!r}: no files given", [ids[0]])
        assignment = assign_files([p for p, _ in found], ids, [n for _, n in found])
    busy = {e: (key, files, loader, mmap, options or {}) for e, files in assignment.items()
            if files}
    if not busy:
        raise PartitionLoadError(f"could not load {key!r}: no files given", [])
    d = apply_each(client, loaders.load, busy)
    described = yield d.addErrback(lambda f: _load_error(key, f))
    idle = [e for e in ids if e not in busy]
    if idle:
        first = described[next(iter(busy))]
        more = yield apply_each(client, loaders.empty, {
            e: (key, first["trailing"], first["dtype"]) for e in idle})
        described.update(more)
    rows = layout_from_rows({e: described[e]["rows"] for e in ids}, ids)
    return {e: {"rows": rows[e], "files": assignment[e]} for e in ids}

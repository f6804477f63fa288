"""Partition and join: how scatter splits a sequence and gather rebuilds it.

`partition` cuts a sequence into n parts whose lengths differ by at most one,
earlier parts longer; `join` puts parts back together in order. Lists,
tuples, ranges, str and bytes are sliced (so a part has the type of the
whole); NumPy arrays are split along axis 0 into views; any other sequence
gives lists.

`join` concatenates arrays along axis 0, tuples into a tuple, and anything
else into a list. It treats str and bytes parts as single elements, never
gluing them together, so that the flattened parts of a list of strings come
back as that list; the pieces of a scattered string come back as a list of
pieces.

With ``flatten=True`` a part of length one is its single element, as in
IPython's scatter. That is lossy: `join` cannot tell a flattened element that
is itself a list (or tuple, or array) from a part, so it is exact only for
parts made without flatten, or whose elements are scalars.

NumPy is never imported here: an array can only exist once something else
imported it, so it is looked up in ``sys.modules``.
"""

from __future__ import annotations

import itertools
import math
import operator
import sys
from collections.abc import Callable, Sequence
from typing import Any, SupportsIndex

__all__ = ["join", "partition", "partitions"]

# Sliced as they are; a slice keeps the type.
_SLICEABLE = (list, tuple, range, str, bytes, bytearray)

# A part of one of these is spread out by join; anything else is one element.
_SPREAD = (list, tuple, range)


def partition(seq: Any, n: SupportsIndex, index: SupportsIndex, flatten: bool = False) -> Any:
    """Return the index-th of n parts of seq."""
    count = _check_count(n)
    try:
        which = operator.index(index)
    except TypeError:
        raise ValueError(f"part index must be an integer, not {type(index).__name__}") from None
    if not 0 <= which < count:
        raise ValueError(f"part index {which} out of range for {count} parts")
    length = _length(seq)
    return _part(seq, *_bounds(length, count, which), flatten)


def partitions(seq: Any, n: SupportsIndex, flatten: bool = False) -> list[Any]:
    """Return all n parts of seq, in order."""
    count = _check_count(n)
    length = _length(seq)
    return [_part(seq, *_bounds(length, count, which), flatten) for which in range(count)]


def join(parts: Sequence[Any], buffer: Callable[[int], Any] | None = None) -> Any:
    """Put parts back together in order; the inverse of `partitions`.

    buffer(nbytes), if given, may return writable memory of nbytes (or None)
    for joined arrays to be built on, instead of memory NumPy allocates.
    """
    parts = list(parts)
    if not parts:
        return []
    np = sys.modules.get("numpy")
    if np is not None and any(isinstance(part, np.ndarray) for part in parts):
        joined = _join_arrays(np, parts, buffer)
        if joined is not None:
            return joined
    if all(type(part) is tuple for part in parts):
        return tuple(itertools.chain.from_iterable(parts))
    # Lists, ranges, and elements that flatten left alone: one flat list.
    out: list[Any] = []
    for part in parts:
        if isinstance(part, _SPREAD):
            out.extend(part)
        else:
            out.append(part)
    return out


def _check_count(n: SupportsIndex) -> int:
    """Return n as an int if it is a valid number of parts."""
    try:
        count = operator.index(n)
    except TypeError:
        raise ValueError(f"number of parts must be an integer, not {type(n).__name__}") from None
    if count < 1:
        raise ValueError(f"number of parts must be at least 1, not {count}")
    return count


def _length(seq: Any) -> int:
    """Return the length of seq along the axis it is split on."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(seq, np.ndarray):
        if seq.ndim == 0:
            raise ValueError("cannot partition a 0-d array: it has no axis 0")
        return int(seq.shape[0])
    if not isinstance(seq, Sequence):
        raise ValueError(
            f"can only partition a sequence (list, tuple, range, str, bytes, NumPy array), "
            f"not {type(seq).__name__}"
        )
    return len(seq)


def _bounds(length: int, n: int, index: int) -> tuple[int, int]:
    """Return where the index-th of n parts starts and stops."""
    size, extra = divmod(length, n)
    # The first `extra` parts get one more item each.
    start = index * size + min(index, extra)
    return start, start + size + (index < extra)


def _part(seq: Any, start: int, stop: int, flatten: bool) -> Any:
    """Return seq[start:stop], or its only item when flattening."""
    if flatten and stop - start == 1:
        return seq[start]
    np = sys.modules.get("numpy")
    if isinstance(seq, _SLICEABLE) or (np is not None and isinstance(seq, np.ndarray)):
        return seq[start:stop]
    return list(itertools.islice(seq, start, stop))


def _join_arrays(np: Any, parts: list[Any], buffer: Callable[[int], Any] | None = None) -> Any:
    """Concatenate array parts along axis 0, or return None if they are not all arrays."""
    if not all(isinstance(part, (np.ndarray, np.generic)) for part in parts):
        return None
    ndim = max(part.ndim for part in parts)
    if ndim == 0 or any(part.ndim not in (ndim, ndim - 1) for part in parts):
        return None
    # Concatenation would turn a byte-swapped dtype native; keep the parts' dtype.
    dtypes = {part.dtype for part in parts if isinstance(part, np.ndarray)}
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    # A part one dimension short is a row that flatten took out of its part.
    rows = [part if part.ndim == ndim else part[np.newaxis] for part in parts]
    out = None if buffer is None else _empty_on(np, rows, dtype, buffer)
    if out is not None:
        return np.concatenate(rows, out=out)
    return np.concatenate(rows, dtype=dtype)


def _empty_on(np: Any, rows: list[Any], dtype: Any, buffer: Callable[[int], Any]) -> Any:
    """Return an array on buffer(nbytes) that rows concatenate into, or None."""
    tail = rows[0].shape[1:]
    if any(row.shape[1:] != tail for row in rows):
        return None  # concatenate says what is wrong
    if dtype is None:
        try:
            dtype = np.result_type(*{row.dtype for row in rows})
        except TypeError:
            return None
    if dtype.hasobject:
        return None
    shape = (sum(row.shape[0] for row in rows), *tail)
    count = math.prod(shape)
    memory = buffer(count * dtype.itemsize) if count else None
    if memory is None:
        return None
    return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)


def map_chunk(f: Callable[..., Any], *chunks: Sequence[Any]) -> list[Any]:
    """Apply f elementwise on an engine (the body of map, direct or as tasks)."""
    return list(map(f, *chunks))

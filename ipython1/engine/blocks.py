"""An engine's block of a distributed array: rows, elementwise work, partial results.

A block is one NumPy array, or a list of arrays joined along axis 0 (several
memory-mapped files). Partial results of a reduction are small and have a
module-level combine function, so engines can fold them among themselves
(`ipython1.engine.reduction`); the client turns the final one into the answer.
Large blocks are walked in pieces of at most PIECE_BYTES, so a statistic
needs little memory beyond the block itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ipython1.engine.loaders import user_namespace

__all__ = ["COMBINE", "delete", "elementwise", "map_blocks", "partial", "rows", "select"]

PIECE_BYTES = 16 * 2**20


def chunks(key: str) -> list[Any]:
    """Return the arrays that make up the block under key."""
    block = user_namespace()[key]
    return block if isinstance(block, list) else [block]


def _pieces(arrays: list[Any]) -> Iterator[Any]:
    for a in arrays:
        row_bytes = max(1, a.itemsize * (a.size // a.shape[0] if a.shape[0] else 1))
        step = max(1, PIECE_BYTES // row_bytes)
        for start in range(0, a.shape[0], step):
            yield a[start:start + step]


def rows(key: str, start: int, stop: int, step: int, rest: tuple[Any, ...]) -> Any:
    """Return block rows start:stop:step (local numbering), then index rest."""
    parts, offset = [], 0
    for a in chunks(key):
        n = a.shape[0]
        lo = max(start, offset)
        if (lo - start) % step:
            lo += step - (lo - start) % step
        hi = min(stop, offset + n)
        if lo < hi:
            parts.append(a[lo - offset:hi - offset:step])
        offset += n
    if not parts:
        first = chunks(key)[0]
        parts = [first[0:0]]
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.ascontiguousarray(out[(slice(None), *rest)] if rest else out)


def _apply_to_chunks(out_key: str, func: Callable[..., Any],
                     operands: list[tuple[str, Any]]) -> None:
    """Bind out_key to func applied across the operands' chunks (aligned, or joined)."""
    keyed = [chunks(v) for kind, v in operands if kind == "key"]
    lengths = {tuple(c.shape[0] for c in cs) for cs in keyed}
    if len(lengths) > 1:  # chunked differently: join them first
        keyed = [[c[0] if len(c) == 1 else np.concatenate(c)] for c in keyed]
    count = len(keyed[0]) if keyed else 1
    out = []
    for i in range(count):
        it = iter(keyed)
        args = [next(it)[i] if kind == "key" else v for kind, v in operands]
        out.append(func(*args))
    if not all(isinstance(o, np.ndarray) and o.ndim >= 1 for o in out):
        raise TypeError("an elementwise operation must give an array with rows for each block")
    user_namespace()[out_key] = out[0] if count == 1 else out


def elementwise(out_key: str, ufunc: Any, operands: list[tuple[str, Any]],
                kwargs: dict[str, Any]) -> None:
    """Bind out_key to ufunc(*operands): ("key", name) is a block, ("value", v) a value."""
    _apply_to_chunks(out_key, lambda *args: ufunc(*args, **kwargs), operands)


def map_blocks(out_key: str, func: Callable[..., Any], key: str, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> None:
    """Bind out_key to func(chunk, *args, **kwargs) for each chunk of key's block."""
    _apply_to_chunks(out_key, lambda block: func(block, *args, **kwargs), [("key", key)])


def select(out_key: str, key: str, mask_key: str) -> None:
    """Bind out_key to the rows of key's block where mask_key's block is true."""
    def joined(name: str) -> Any:
        parts = chunks(name)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    user_namespace()[out_key] = joined(key)[joined(mask_key)]


def delete(keys: list[str]) -> None:
    """Forget temporary blocks."""
    ns = user_namespace()
    for key in keys:
        ns.pop(key, None)


# -- partial results: op -> (per piece, combine); None stands for "no rows" --

def _sum(piece: Any, axis: Any, params: dict[str, Any]) -> Any:
    return np.sum(piece, axis=axis, dtype=params.get("dtype"))


def _count_sum(piece: Any, axis: Any, params: dict[str, Any]) -> Any:
    n = piece.size if axis is None else piece.shape[0]
    return n, np.sum(piece, axis=axis, dtype=np.result_type(piece.dtype, np.float64))


def _moments(piece: Any, axis: Any, params: dict[str, Any]) -> Any:
    n = piece.size if axis is None else piece.shape[0]
    mean = np.mean(piece, axis=axis, dtype=np.float64)
    dev = np.subtract(piece, mean, dtype=np.float64)
    if axis is None:  # a dot product: no second temporary, and BLAS is fast
        flat = dev.reshape(-1)
        return n, mean, float(np.dot(flat, flat))
    return n, mean, np.einsum("i...,i...->...", dev, dev)


def _min(piece: Any, axis: Any, params: dict[str, Any]) -> Any:
    return np.min(piece, axis=axis)


def _max(piece: Any, axis: Any, params: dict[str, Any]) -> Any:
    return np.max(piece, axis=axis)


def _minmax(piece: Any, axis: Any, params: dict[str, Any]) -> Any:
    return np.min(piece, axis=axis), np.max(piece, axis=axis)


def _argmax(piece: Any, axis: Any, params: dict[str, Any]) -> Any:
    i = int(np.argmax(piece))
    return piece.flat[i], i + params["offset"]


def _histogram(piece: Any, axis: Any, params: dict[str, Any]) -> Any:
    counts, _ = np.histogram(piece, bins=params["bins"], range=params["range"])
    return counts.astype(np.int64)


def add(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else a + b


def add_pairs(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else (a[0] + b[0], a[1] + b[1])


def merge_moments(a: Any, b: Any) -> Any:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations)."""
    if a is None or a[0] == 0:
        return b
    if b is None or b[0] == 0:
        return a
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta * delta * (na * nb / n)


def minimum(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else np.minimum(a, b)


def maximum(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else np.maximum(a, b)


def min_and_max(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return b if a is None else a
    return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])


def _nan_max_key(item: Any) -> tuple[bool, Any]:
    value = item[0]
    return bool(np.isnan(value)) if np.issubdtype(type(value), np.inexact) else False, value


def first_argmax(a: Any, b: Any) -> Any:
    """Keep the larger value (NaN counts as largest, as in np.argmax); ties: the first."""
    if a is None:
        return b
    if b is None:
        return a
    ka, kb = _nan_max_key(a), _nan_max_key(b)
    if ka[0] and not kb[0]:
        return a
    if kb[0] and not ka[0]:
        return b
    if ka[0] and kb[0]:
        return a if a[1] <= b[1] else b
    if a[0] == b[0]:
        return a if a[1] <= b[1] else b
    return a if a[0] > b[0] else b


COMBINE: dict[str, tuple[Callable[..., Any], Callable[[Any, Any], Any]]] = {
    "sum": (_sum, add),
    "mean": (_count_sum, add_pairs),
    "moments": (_moments, merge_moments),
    "min": (_min, minimum),
    "max": (_max, maximum),
    "minmax": (_minmax, min_and_max),
    "argmax": (_argmax, first_argmax),
    "histogram": (_histogram, add),
}


def partial(key: str, op: str, axis: Any, params: dict[str, Any]) -> Any:
    """Return this engine's partial result of op over its block (None if it has no rows)."""
    per_piece, combine = COMBINE[op]
    result = None
    offset = params.get("offset", 0)
    for piece in _pieces(chunks(key)):
        if piece.shape[0] == 0:
            continue
        if op == "argmax":
            params = dict(params, offset=offset)
            offset += piece.size
        result = combine(result, per_piece(piece, axis, params))
    return result

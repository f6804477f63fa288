"""DistArray: one array made of the blocks engines hold under one name.

The blocks are joined along axis 0 in engine order (the layout `scatter` and
`load_partitions` make). Indexing fetches only the rows asked for;
arithmetic and NumPy ufuncs run where the blocks are and give a new
DistArray; statistics are folded among the engines
(`ipython1.client.reduction`), so only small partial results travel.
"""

from __future__ import annotations

import math
import operator
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ipython1.client.each import apply_each
from ipython1.client.partitions import layout_from_rows
from ipython1.engine import blocks, loaders

__all__ = ["DistArray"]

REPR_ENGINES = 10  # a repr lists this many engines' rows at most


def _each(mec: Any, func: Callable[..., Any], args: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
    """Run func(*args[e]) on each engine e at once; return {engine: result}."""
    return mec._call(apply_each, mec._async, func, args)  # type: ignore[no-any-return]


def _forget(mec: Any, ids: list[int], key: str) -> None:
    """Delete a temporary block on the engines, without waiting (from a finalizer)."""
    try:
        mec._loop.submit(mec._async.apply, blocks.delete, [key], targets=ids, block=True)
    except Exception:
        pass


class DistArray:
    """An array whose rows are spread over engines; see docs/data.md."""

    def __init__(self, mec: Any, key: str, ids: Sequence[int], rows: dict[int, int],
                 trailing: Sequence[int], dtype: Any, temporary: bool = False) -> None:
        self.mec = mec
        self.key = key
        self.ids = list(ids)
        self.rows = layout_from_rows(rows, self.ids)  # engine -> range of global rows
        self.dtype = np.dtype(dtype)
        self.shape = (sum(len(r) for r in self.rows.values()), *map(int, trailing))
        if temporary:  # made by an operation: its blocks go when the handle goes
            self._finalizer = weakref.finalize(self, _forget, mec, self.ids, key)
            self._finalizer.atexit = False

    @classmethod
    def attach(cls, mec: Any, key: str, targets: Any = None,
               temporary: bool = False) -> DistArray:
        """Describe the blocks named key on targets (default: the client's)."""
        targets = mec.targets if targets is None else targets
        ids = [targets] if isinstance(targets, int) else mec._call(mec._async._ids, targets)
        described = _each(mec, loaders.describe, {e: (key,) for e in ids})
        first = described[ids[0]]
        for e in ids:
            d = described[e]
            if d["trailing"] != first["trailing"] or d["dtype"] != first["dtype"]:
                raise ValueError(
                    f"blocks of {key!r} do not fit together: engine {ids[0]} holds "
                    f"{np.dtype(first['dtype'])} rows of shape {first['trailing']}, engine {e} "
                    f"{np.dtype(d['dtype'])} rows of shape {d['trailing']}")
        return cls(mec, key, ids, {e: described[e]["rows"] for e in ids}, first["trailing"],
                   first["dtype"], temporary)

    # -- what it is --

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def layout(self) -> dict[int, range]:
        """Return {engine_id: range of the global rows it holds}."""
        return dict(self.rows)

    def __repr__(self) -> str:
        lines = [f"DistArray {self.key!r}: {self.dtype} {self.shape}, "
                 f"{_human(self.nbytes)} on {len(self.ids)} engine(s)"]
        shown = list(self.rows.items())
        if len(shown) > REPR_ENGINES:  # the first and last few: enough to see the pattern
            half = REPR_ENGINES // 2
            shown = [*shown[:half], None, *shown[-half:]]  # type: ignore[list-item]
        for item in shown:
            if item is None:
                lines.append(f"  ... ({len(self.rows) - 2 * half} more engines)")
                continue
            e, r = item
            lines.append(f"  engine {e}: rows {r.start}:{r.stop} ({len(r)})")
        return "\n".join(lines)

    # -- fetching rows --

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, DistArray):
            return self._select(index)
        first, rest = (index[0], tuple(index[1:])) if isinstance(index, tuple) else (index, ())
        if first is Ellipsis:
            first, rest = slice(None), (Ellipsis, *rest)
        if isinstance(first, slice):
            wanted = range(*first.indices(len(self)))
            if wanted.step < 0:
                return self._fetch(wanted[::-1], rest)[::-1]
            return self._fetch(wanted, rest)
        try:
            i = operator.index(first)
        except TypeError:
            raise TypeError(f"DistArray rows are chosen by an int or a slice, not "
                            f"{type(first).__name__}") from None
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} is out of range for {len(self)} rows")
        i %= len(self)
        return self._fetch(range(i, i + 1), rest)[0]

    def _fetch(self, wanted: range, rest: tuple[Any, ...]) -> Any:
        """Fetch global rows wanted (step > 0) from the engines that hold them."""
        args = {}
        for e, r in self.rows.items():
            mine = wanted[_slice_within(wanted, r.start, r.stop)]
            if len(mine):
                args[e] = (self.key, mine.start - r.start, mine[-1] - r.start + 1, mine.step,
                           rest)
        if not args:
            empty = np.empty((0, *self.shape[1:]), self.dtype)
            return empty[(slice(None), *rest)] if rest else empty
        parts = _each(self.mec, blocks.rows, args)
        ordered = [parts[e] for e in self.ids if e in parts]
        return ordered[0] if len(ordered) == 1 else np.concatenate(ordered)

    def _select(self, mask: DistArray) -> DistArray:
        """Keep the rows where a boolean DistArray of one value per row is true."""
        if mask.dtype != np.bool_ or mask.ndim != 1 or mask.layout != self.layout:
            raise IndexError("a DistArray index must be boolean, one value per row, laid out "
                             f"as {self.key!r} is")
        return self._new(lambda out: {e: (out, self.key, mask.key) for e in self.ids},
                         blocks.select)

    def to_numpy(self) -> Any:
        """Fetch the whole array (mind the client's memory)."""
        return self[:]

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        out = self.to_numpy()
        return out if dtype is None else out.astype(dtype)

    # -- computing where the blocks are --

    def _new(self, run: Callable[[str], dict[int, tuple[Any, ...]]],
             func: Callable[..., Any]) -> DistArray:
        out_key = f"_distarray_{uuid.uuid4().hex[:12]}"
        _each(self.mec, func, run(out_key))
        return DistArray.attach(self.mec, out_key, self.ids, temporary=True)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__" or ufunc.nout != 1 or "out" in kwargs:
            return NotImplemented
        operands: list[tuple[str, Any]] = []
        for x in inputs:
            if isinstance(x, DistArray):
                if x.ids != self.ids or x.rows != self.rows:
                    raise ValueError(f"{x.key!r} and {self.key!r} are laid out differently "
                                     "on the engines")
                operands.append(("key", x.key))
            else:
                value = np.asarray(x)
                if value.ndim >= self.ndim and value.ndim > 0:
                    raise ValueError("a local operand may only broadcast along the rows' "
                                     f"dimensions, not have shape {value.shape}")
                operands.append(("value", x))
        return self._new(lambda out: {e: (out, ufunc, operands, kwargs) for e in self.ids},
                         blocks.elementwise)

    def map_blocks(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> DistArray:
        """Apply func(block, *args, **kwargs) on each engine; it must keep the rows."""
        return self._new(lambda out: {e: (out, func, self.key, args, kwargs) for e in self.ids},
                         blocks.map_blocks)

    def astype(self, dtype: Any) -> DistArray:
        return self.map_blocks(np.ndarray.astype, np.dtype(dtype))

    def free(self) -> None:
        """Delete this array's blocks on the engines now."""
        _each(self.mec, blocks.delete, {e: ([self.key],) for e in self.ids})

    # -- reductions among the engines --

    def _reduce(self, op: str, axis: Any = None, **params: Any) -> Any:
        if axis not in (None, 0) and not (axis == -self.ndim):
            raise ValueError(f"{op} over axis {axis}: use map_blocks (rows stay where they are)")
        axis = None if axis is None else 0
        offsets = {e: r.start * (self.size // max(1, len(self))) for e, r in self.rows.items()}
        source = {e: (blocks.partial, (self.key, op, axis, dict(params, offset=offsets[e])))
                  for e in self.ids}
        return self.mec._reduce(blocks.COMBINE[op][1], source, self.ids)

    def sum(self, axis: Any = None, dtype: Any = None, out: None = None) -> Any:
        _no_out(out)
        if len(self) == 0:
            return np.sum(np.empty(self.shape, self.dtype), axis=axis, dtype=dtype)
        return self._reduce("sum", axis, dtype=dtype)

    def mean(self, axis: Any = None, dtype: Any = None, out: None = None) -> Any:
        _no_out(out)
        n, total = self._nonempty("mean", axis)
        result = total / n
        return result if dtype is None else np.asarray(result).astype(dtype)[()]

    def var(self, axis: Any = None, dtype: Any = None, out: None = None, ddof: int = 0) -> Any:
        _no_out(out)
        n, _, m2 = self._nonempty("moments", axis)
        result = m2 / (n - ddof)
        return result if dtype is None else np.asarray(result).astype(dtype)[()]

    def std(self, axis: Any = None, dtype: Any = None, out: None = None, ddof: int = 0) -> Any:
        return np.sqrt(self.var(axis, dtype, out, ddof))

    def min(self, axis: Any = None, out: None = None) -> Any:
        _no_out(out)
        return self._nonempty("min", axis)

    def max(self, axis: Any = None, out: None = None) -> Any:
        _no_out(out)
        return self._nonempty("max", axis)

    def argmax(self) -> int:
        """Return the index of the largest element in the flattened array (first one)."""
        return int(self._nonempty("argmax", None)[1])

    def histogram(self, bins: Any = 10, range: tuple[float, float] | None = None) -> Any:
        """Return (counts, bin_edges) as np.histogram gives them for the whole array.

        bins is a number of equal bins over range (default: min to max), or
        the bin edges themselves.
        """
        if isinstance(bins, int):
            if range is None:
                low, high = self._nonempty("minmax", None) if len(self) else (0.0, 1.0)
                range = (float(low), float(high))
            edges = np.histogram_bin_edges(np.empty(0, self.dtype), bins, range)
            count = bins
        else:
            edges = np.asarray(bins)
            bins, range, count = edges, None, len(edges) - 1
        counts = self._reduce("histogram", None, bins=bins, range=range)
        return (counts if counts is not None else np.zeros(count, np.int64)), edges

    def _nonempty(self, op: str, axis: Any) -> Any:
        result = self._reduce(op, axis)
        if result is None:
            raise ValueError(f"{op} of an empty DistArray")
        return result

    # -- operators: NumPy ufuncs under the hood --

    def __neg__(self) -> DistArray:
        return np.negative(self)  # type: ignore[no-any-return]

    def __abs__(self) -> DistArray:
        return np.absolute(self)  # type: ignore[no-any-return]


def _no_out(out: Any) -> None:
    if out is not None:
        raise TypeError("a DistArray's statistics return new values; out= is not supported")


def _slice_within(wanted: range, lo: int, hi: int) -> slice:
    """Return the slice of wanted whose values fall in lo:hi."""
    first = max(0, -(-(lo - wanted.start) // wanted.step))
    last = max(first, -(-(hi - wanted.start) // wanted.step))
    return slice(first, last)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _binary(ufunc: Any, reflected: bool = False) -> Callable[[DistArray, Any], Any]:
    if reflected:
        return lambda self, other: ufunc(other, self)
    return lambda self, other: ufunc(self, other)


for _name, _ufunc in {"add": np.add, "sub": np.subtract, "mul": np.multiply,
                      "truediv": np.true_divide, "floordiv": np.floor_divide,
                      "mod": np.remainder, "pow": np.power}.items():
    setattr(DistArray, f"__{_name}__", _binary(_ufunc))
    setattr(DistArray, f"__r{_name}__", _binary(_ufunc, reflected=True))
for _name, _ufunc in {"lt": np.less, "le": np.less_equal, "gt": np.greater,
                      "ge": np.greater_equal, "eq": np.equal, "ne": np.not_equal}.items():
    setattr(DistArray, f"__{_name}__", _binary(_ufunc))
DistArray.__hash__ = None  # type: ignore[assignment]

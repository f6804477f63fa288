"""Tests for ipython1.common.scatter: partition and join."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ipython1
from ipython1.common.scatter import join, partition, partitions

counts = st.integers(1, 9)


def lengths_of(parts: list[Any]) -> list[int]:
    return [len(part) for part in parts]


def check_sizes(parts: list[Any], total: int, n: int) -> None:
    """Check n parts of total items: sizes differ by at most one, larger first."""
    sizes = lengths_of(parts)
    assert len(sizes) == n and sum(sizes) == total
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


@given(st.lists(st.integers()), counts)
def test_list_roundtrip(seq: list[int], n: int) -> None:
    parts = partitions(seq, n)
    assert all(type(part) is list for part in parts)
    check_sizes(parts, len(seq), n)
    assert join(parts) == seq
    assert [partition(seq, n, i) for i in range(n)] == parts


@given(st.lists(st.integers()).map(tuple), counts)
def test_tuple_roundtrip(seq: tuple[int, ...], n: int) -> None:
    parts = partitions(seq, n)
    assert all(type(part) is tuple for part in parts)
    check_sizes(parts, len(seq), n)
    assert join(parts) == seq and type(join(parts)) is tuple


@given(st.integers(0, 50), st.integers(-5, 5).filter(bool), counts)
def test_range_roundtrip(stop: int, step: int, n: int) -> None:
    seq = range(0, stop * step, step)
    parts = partitions(seq, n)
    assert all(type(part) is range for part in parts)
    check_sizes(parts, len(seq), n)
    assert join(parts) == list(seq)


@given(
    hnp.arrays(
        hnp.scalar_dtypes(),
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12),
    ),
    counts,
)
def test_array_roundtrip(array: np.ndarray, n: int) -> None:
    parts = partitions(array, n)
    assert all(type(part) is np.ndarray for part in parts)
    check_sizes(parts, len(array), n)
    assert all(np.shares_memory(part, array) for part in parts if part.size)  # views
    joined = join(parts)
    assert joined.dtype == array.dtype and joined.shape == array.shape
    assert joined.tobytes() == array.tobytes()


@given(st.lists(st.integers(), min_size=1), counts)
def test_flatten_list(seq: list[int], n: int) -> None:
    parts = partitions(seq, n, flatten=True)
    for part, plain in zip(parts, partitions(seq, n), strict=True):
        assert part == (plain[0] if len(plain) == 1 else plain)
    assert join(parts) == seq
    assert [partition(seq, n, i, flatten=True) for i in range(n)] == parts


@given(st.lists(st.integers(), min_size=1).map(tuple), counts)
def test_flatten_tuple(seq: tuple[int, ...], n: int) -> None:
    parts = partitions(seq, n, flatten=True)
    joined = join(parts)
    # Once flatten has made an element of a part, the parts join as a list.
    if all(type(part) is tuple for part in parts):
        assert type(joined) is tuple and joined == seq
    else:
        assert joined == list(seq)


@given(
    hnp.arrays(
        hnp.scalar_dtypes(),
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12),
    ),
    counts,
)
def test_flatten_array(array: np.ndarray, n: int) -> None:
    parts = partitions(array, n, flatten=True)
    plain = partitions(array, n)
    for part, whole in zip(parts, plain, strict=True):
        if len(whole) == 1:
            assert part.shape == whole.shape[1:]
    if any(len(whole) > 1 for whole in plain):
        # Parts and rows mixed: rows are put back as rows.
        joined = join(parts)
        assert joined.dtype == array.dtype and joined.shape == array.shape
        assert joined.tobytes() == array.tobytes()


def test_flatten_examples() -> None:
    assert partitions([1, 2, 3], 2, flatten=True) == [[1, 2], 3]
    assert partitions([1, 2, 3], 3, flatten=True) == [1, 2, 3]
    assert partitions([1], 3, flatten=True) == [1, [], []]
    assert join([[1, 2], 3]) == [1, 2, 3]
    assert join([(1, 2), 3]) == [1, 2, 3]
    assert join([1, 2, 3]) == [1, 2, 3]


def test_examples() -> None:
    assert partitions(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert partitions([1, 2], 4) == [[1], [2], [], []]
    assert partitions([], 2) == [[], []]
    assert partition(range(10), 3, 2) == range(7, 10)
    assert partitions("hello", 2) == ["hel", "lo"]
    assert partitions(b"abc", 2) == [b"ab", b"c"]
    assert join([]) == []


def test_other_sequences_give_lists() -> None:
    parts = partitions(collections.deque([1, 2, 3, 4, 5]), 2)
    assert parts == [[1, 2, 3], [4, 5]]
    assert join(parts) == [1, 2, 3, 4, 5]


def test_array_parts_are_views() -> None:
    array = np.arange(10)
    part = partition(array, 2, 1)
    part[0] = -1
    assert array[5] == -1


def test_fortran_array_splits_along_axis_0() -> None:
    array = np.asfortranarray(np.arange(24).reshape(6, 4))
    parts = partitions(array, 4)
    assert [p.shape for p in parts] == [(2, 4), (2, 4), (1, 4), (1, 4)]
    assert np.array_equal(join(parts), array)


def test_strings_are_elements_when_joined() -> None:
    # Flattened parts of a list of strings must not run together.
    names = ["ab", "cd", "ef"]
    assert join(partitions(names, 3, flatten=True)) == names


@pytest.mark.parametrize("n", [0, -1])
def test_bad_count(n: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partitions([1, 2], n)
    with pytest.raises(ValueError, match="at least 1"):
        partition([1, 2], n, 0)


def test_count_must_be_an_integer() -> None:
    with pytest.raises(ValueError, match="integer"):
        partitions([1, 2], 2.0)  # type: ignore[arg-type]
    assert partitions([1, 2], np.int64(2)) == [[1], [2]]


@pytest.mark.parametrize("index", [-1, 3, 10])
def test_bad_index(index: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        partition([1, 2, 3], 3, index)


@pytest.mark.parametrize("value", [{1, 2}, {"a": 1}, 42, None, iter([1, 2]), np.array(5)])
def test_not_a_sequence(value: Any) -> None:
    with pytest.raises(ValueError, match="partition"):
        partitions(value, 2)
    with pytest.raises(ValueError, match="partition"):
        partition(value, 2, 0)


def test_import_does_not_import_numpy() -> None:
    code = (
        "import sys, ipython1.common.scatter as s\n"
        "assert s.join(s.partitions([1, 2, 3], 2, flatten=True)) == [1, 2, 3]\n"
        "print('numpy' in sys.modules)"
    )
    root = os.path.dirname(os.path.dirname(ipython1.__file__))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


@given(array=hnp.arrays(st.sampled_from([np.float64, np.dtype(">i4"), np.dtype("u1,f8")]),
                        hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6)),
       n=st.integers(1, 5))
def test_join_into_given_memory_equals_a_plain_join(array: np.ndarray, n: int) -> None:
    given_memory: list[bytearray] = []

    def buffer(nbytes: int) -> bytearray:
        given_memory.append(bytearray(b"\xff" * nbytes))  # stale bytes must not show
        return given_memory[-1]

    parts = partitions(array, n)
    joined = join(parts, buffer=buffer)
    plain = join(parts)
    assert joined.dtype == plain.dtype and joined.shape == plain.shape
    assert joined.tobytes() == plain.tobytes()
    if array.size:  # built on the memory given, not a copy of it
        assert len(given_memory) == 1
        assert np.shares_memory(joined, np.frombuffer(given_memory[0], dtype=np.uint8))


def test_join_falls_back_where_given_memory_cannot_serve() -> None:
    asked: list[int] = []

    def buffer(nbytes: int) -> None:
        asked.append(nbytes)
        return None  # e.g. too small to be worth it

    assert join([np.arange(3), np.arange(2)], buffer=buffer).tolist() == [0, 1, 2, 0, 1]
    assert asked == [5 * np.arange(1).itemsize]
    objects = join([np.array([1, None], dtype=object), np.array(["x"], dtype=object)],
                   buffer=lambda nbytes: pytest.fail("no raw memory for object arrays"))
    assert objects.tolist() == [1, None, "x"]
    mixed = join([np.zeros(2, np.int32), np.ones(1)], buffer=lambda nbytes: bytearray(nbytes))
    assert mixed.dtype == np.float64 and mixed.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="dimensions"):  # concatenate's own error
        join([np.zeros((2, 3)), np.zeros((2, 4))], buffer=lambda nbytes: bytearray(nbytes))

"""Pure parts of issue 21: the reduction tree, file assignment, block rows and partials."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipython1.client.distarray import _slice_within
from ipython1.client.partitions import assign_files, layout_from_rows
from ipython1.client.reduction import tree_plan
from ipython1.engine import blocks


@pytest.mark.parametrize("n", [*range(1, 18), 31, 32, 33, 64, 100])
def test_the_tree_folds_every_value_once_in_order(n):
    plan = tree_plan(n)
    assert plan[0][0] is None
    for i, (parent, children) in enumerate(plan):
        for child in children:
            assert plan[child][0] == i
        if i:
            assert parent is not None and parent < i
    # Simulate combine: each node folds its own value, then its children's in order.
    def fold(i: int) -> list[int]:
        value = [i]
        for child in plan[i][1]:
            value = value + fold(child)
        return value

    assert fold(0) == list(range(n))
    depth = max(bin(i).count("1") for i in range(n))
    assert depth <= max(1, (n - 1).bit_length())


def test_a_tree_needs_an_engine():
    with pytest.raises(ValueError):
        tree_plan(0)


def test_files_are_dealt_in_contiguous_even_runs():
    paths = [f"f{i}" for i in range(10)]
    assignment = assign_files(paths, [4, 7, 9])
    assert assignment == {4: paths[0:4], 7: paths[4:7], 9: paths[7:10]}
    assert assign_files(paths[:2], [0, 1, 2]) == {0: ["f0"], 1: ["f1"], 2: []}
    assert layout_from_rows({4: 3, 7: 0, 9: 5}, [4, 7, 9]) == {
        4: range(0, 3), 7: range(3, 3), 9: range(3, 8)}


@given(sizes=st.lists(st.integers(0, 1000), min_size=1, max_size=40),
       engines=st.integers(1, 12))
def test_files_by_size_are_contiguous_and_about_even(sizes, engines):
    paths = [f"f{i}" for i in range(len(sizes))]
    ids = list(range(100, 100 + engines))
    assignment = assign_files(paths, ids, sizes)
    assert list(assignment) == ids
    assert [p for e in ids for p in assignment[e]] == paths  # contiguous, in order
    if len(paths) >= engines:
        assert all(assignment[e] for e in ids)
    if len(paths) > engines and sum(sizes):
        size = dict(zip(paths, sizes, strict=True))
        share = sum(sizes) / engines
        loads = [sum(size[p] for p in assignment[e]) for e in ids]
        assert max(loads) <= share + 2 * max(sizes)


def test_files_by_size_follow_the_bytes():
    paths = [f"f{i}" for i in range(6)]
    assert assign_files(paths, [0, 1], [10, 10, 10, 10, 10, 50]) == {
        0: paths[:5], 1: paths[5:]}
    assert assign_files(paths, [0, 1], [-1, 10, 10, 10, 10, 50]) == {  # a size unknown
        0: paths[:3], 1: paths[3:]}


@pytest.fixture
def namespace(monkeypatch):
    ns: dict = {}
    monkeypatch.setattr(blocks, "user_namespace", lambda: ns)
    monkeypatch.setattr(blocks, "PIECE_BYTES", 64)  # several pieces per chunk
    return ns


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5),
       start=st.integers(-30, 30), stop=st.integers(-30, 30) | st.none(),
       step=st.integers(1, 4))
def test_block_rows_of_a_chunk_list_are_numpys(lengths, start, stop, step):
    arrays = [np.arange(n * 2).reshape(n, 2) + 100 * i for i, n in enumerate(lengths)]
    full = np.concatenate(arrays)
    ns = {"b": arrays}
    blocks_rows = functools.partial(blocks.rows, "b")
    original = blocks.user_namespace
    blocks.user_namespace = lambda: ns
    try:
        wanted = range(*slice(start, stop, step).indices(len(full)))
        if len(wanted):
            got = blocks_rows(wanted.start, wanted[-1] + 1, step, ())
        else:
            got = full[0:0]
        np.testing.assert_array_equal(got, full[start:stop:step])
        np.testing.assert_array_equal(blocks_rows(0, len(full), 1, (1,)), full[:, 1])
    finally:
        blocks.user_namespace = original


@given(total=st.integers(0, 40), start=st.integers(0, 45), stop=st.integers(0, 45),
       step=st.integers(1, 5))
def test_slice_within_picks_the_wanted_indices_in_a_range(total, start, stop, step):
    wanted = range(0, total, step)
    inside = wanted[_slice_within(wanted, start, stop)]
    assert list(inside) == [i for i in wanted if start <= i < stop]


def _partial(ns: dict, op: str, axis=None, **params):
    """Partial results of several engines' blocks, folded like the tree does."""
    per_engine = []
    offset = 0
    for block in ns["engines"]:
        ns["x"] = block
        rows = sum(c.shape[0] for c in (block if isinstance(block, list) else [block]))
        per_engine.append(blocks.partial("x", op, axis, dict(params, offset=offset)))
        offset += rows * 3
    combine = blocks.COMBINE[op][1]
    return functools.reduce(combine, per_engine)


def test_partials_folded_equal_numpy_on_the_concatenation(namespace):
    rng = np.random.default_rng(3)
    engines = [[rng.normal(size=(5, 3)), rng.normal(size=(9, 3))], np.empty((0, 3)),
               rng.normal(size=(11, 3)) * 4, [rng.normal(size=(2, 3))]]
    engines[2][4, 2] = 50.0
    full = np.concatenate([np.concatenate(b) if isinstance(b, list) else b for b in engines])
    namespace["engines"] = engines
    assert np.isclose(_partial(namespace, "sum"), full.sum())
    n, total = _partial(namespace, "mean")
    assert n == full.size and np.isclose(total / n, full.mean())
    n, mean, m2 = _partial(namespace, "moments")
    assert np.isclose(mean, full.mean()) and np.isclose(np.sqrt(m2 / n), full.std())
    n, mean, m2 = _partial(namespace, "moments", axis=0)
    np.testing.assert_allclose(np.sqrt(m2 / n), full.std(axis=0))
    assert _partial(namespace, "min") == full.min()
    assert _partial(namespace, "minmax") == (full.min(), full.max())
    np.testing.assert_array_equal(_partial(namespace, "max", axis=0), full.max(axis=0))
    value, index = _partial(namespace, "argmax")
    assert value == 50.0 and index == full.argmax()
    counts = _partial(namespace, "histogram", bins=7, range=(-3.0, 3.0))
    np.testing.assert_array_equal(counts, np.histogram(full, 7, (-3.0, 3.0))[0])


def test_argmax_keeps_the_first_of_equal_values_and_nan_wins():
    assert blocks.first_argmax((2.0, 5), (2.0, 3)) == (2.0, 3)
    assert blocks.first_argmax((2.0, 1), (np.nan, 9))[1] == 9
    assert blocks.first_argmax((np.nan, 4), (np.nan, 9))[1] == 4
    assert blocks.first_argmax(None, (1, 0)) == (1, 0)

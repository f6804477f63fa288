"""Tests for ipython1.common.serialize: value <-> frames."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ipython1
from ipython1.common import serialize as S
from ipython1.common.errors import SerializationError
from ipython1.common.serialize import (
    deserialize,
    deserialize_dict,
    frames_size,
    serialize,
    serialize_dict,
)


def roundtrip(value: object) -> Any:
    """Serialize value, check the frames, and deserialize them."""
    frames = serialize(value)
    assert all(type(frame) is bytes for frame in frames)  # Foolscap sends bytes
    assert all(len(frame) <= S.MAX_FRAME for frame in frames[1:])  # [0] is the header
    return deserialize(frames)


@pytest.fixture
def small_frames(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Make frames tiny so that splitting is exercised by small values."""
    monkeypatch.setattr(S, "MAX_FRAME", 1000)
    monkeypatch.setattr(S, "INBAND_LIMIT", 100)
    yield 1000


# -- plain Python values ------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.complex_numbers(allow_nan=False)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5), children)
        | st.frozensets(st.integers())
    ),
    max_leaves=30,
)


@given(values)
def test_python_values_roundtrip(value: object) -> None:
    assert roundtrip(value) == value


@given(values)
def test_python_values_roundtrip_in_small_frames(value: object) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "MAX_FRAME", 7)
        assert roundtrip(value) == value


def test_small_value_is_two_frames() -> None:
    frames = serialize({"a": [1, 2.5, "x", b"y", None]})
    assert len(frames) == 2
    assert frames_size(frames) == sum(len(f) for f in frames)


def test_nan_roundtrips() -> None:
    assert math.isnan(roundtrip(float("nan")))


def test_shared_references_stay_shared() -> None:
    inner = [1, 2]
    outer = roundtrip([inner, inner, np.arange(100_000)])
    assert outer[0] is outer[1]


def test_bytearray_stays_mutable() -> None:
    value = roundtrip(bytearray(b"x" * 200_000))
    assert type(value) is bytearray and value == b"x" * 200_000


# -- functions ----------------------------------------------------------------


def test_lambda_roundtrips() -> None:
    assert roundtrip(lambda x: x + 1)(41) == 42


def test_closure_roundtrips() -> None:
    def make_scaler(k: int) -> Any:
        def scale(x: int) -> int:
            return x * k

        return scale

    assert roundtrip(make_scaler(3))(5) == 15


def test_interactive_function_roundtrips_by_value() -> None:
    # Functions typed at an IPython prompt live in __main__, which the
    # receiving process does not share.
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("import math\ndef hyp(a, b):\n    return math.hypot(a, b)\n", namespace)
    frames = serialize(namespace["hyp"])
    assert b"hyp" in frames[1]
    hyp: Any = deserialize(frames)
    assert hyp(3, 4) == 5.0


def test_interactive_class_roundtrips_by_value() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("class Point:\n    def __init__(self, x):\n        self.x = x\n", namespace)
    point = roundtrip(namespace["Point"](7))
    assert point.x == 7


# -- NumPy arrays -------------------------------------------------------------


def assert_same_array(got: Any, want: np.ndarray) -> None:
    """Check dtype, shape, contents, layout and writeability."""
    assert type(got) is np.ndarray
    if want.dtype.kind in "mM" and got.dtype != want.dtype:
        # NumPy itself pickles datetimes in native byte order: same values.
        assert got.dtype == want.dtype.newbyteorder("=")
        got = got.astype(want.dtype)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if want.dtype.hasobject:
        assert got.tolist() == want.tolist()
    else:
        # Bytes, not ==: NaN, -0.0 and NaT must come back bit for bit.
        assert got.tobytes() == want.tobytes()
    if want.flags.c_contiguous:
        assert got.flags.c_contiguous
    elif want.flags.f_contiguous:
        assert got.flags.f_contiguous
    assert got.flags.writeable


dtypes = (
    hnp.scalar_dtypes()
    | hnp.array_dtypes(allow_subarrays=True)
    | hnp.nested_dtypes(max_itemsize=64)
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)),
    st.booleans(),
)
def test_arrays_roundtrip(array: np.ndarray, fortran: bool) -> None:
    if fortran:
        array = np.asfortranarray(array)
    assert_same_array(roundtrip(array), array)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=1, max_dims=3, max_side=40)),
    st.sampled_from(["c", "f"]),
)
def test_arrays_split_across_frames(array: np.ndarray, order: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "MAX_FRAME", 100)
        mp.setattr(S, "INBAND_LIMIT", 10)
        array = np.asarray(array, order="F" if order == "f" else "C")
        assert_same_array(roundtrip([array, array.copy(), "tail"])[0], array)


@pytest.mark.parametrize(
    "dtype",
    "i1 u2 <i4 >i8 f2 f4 >f8 c16 ? S5 U3 M8[ns] >m8[s] V6".split()
    + [[("a", "i4"), ("b", ">f8", (2,)), ("c", "S3"), ("d", "M8[us]")]],
)
@pytest.mark.parametrize("size", [0, 1, 10, 100_000])
def test_dtypes(dtype: Any, size: int) -> None:
    array = np.frombuffer(np.random.default_rng(1).bytes(size * np.dtype(dtype).itemsize), dtype)
    array = array.copy()
    assert_same_array(roundtrip(array), array)


def test_object_array() -> None:
    array = np.array([1, "two", None, [3], {"four": 4}], dtype=object)
    assert_same_array(roundtrip(array), array)


def test_zero_d_and_empty_arrays() -> None:
    for array in [np.array(3.5), np.array("x"), np.zeros((0,)), np.zeros((3, 0, 2), order="F")]:
        assert_same_array(roundtrip(array), array)


def test_fortran_array_comes_back_fortran() -> None:
    array = np.asfortranarray(np.arange(300_000.0).reshape(600, 500))
    got = roundtrip(array)
    assert_same_array(got, array)
    assert got.flags.f_contiguous and not got.flags.c_contiguous


@pytest.mark.parametrize("size", [10, 1000])
@pytest.mark.parametrize(
    "view",
    [
        lambda a: a[::2],
        lambda a: a[:, ::3],
        lambda a: a[::-1],
        lambda a: a[::-1, ::-2],
        lambda a: a.T,
        lambda a: a.T[1:, ::2],
        lambda a: np.asfortranarray(a)[:, 1::2],
        lambda a: np.broadcast_to(a[0], a.shape),
    ],
)
def test_non_contiguous_arrays(size: int, view: Any) -> None:
    array = view(np.arange(size * 7, dtype="f8").reshape(size, 7))
    got = roundtrip(array)
    assert np.array_equal(got, array)
    assert got.dtype == array.dtype and got.flags.writeable
    # A dense copy goes out-of-band instead of through the pickle stream.
    if array.nbytes >= S.INBAND_LIMIT:
        assert len(serialize(array)) > 2


def test_fortran_slice_stays_fortran() -> None:
    array = np.asfortranarray(np.ones((500, 400)))[:, ::2]
    assert roundtrip(array).flags.f_contiguous


def test_permuted_axes_keep_their_layout() -> None:
    array = np.arange(24_000.0).reshape(20, 30, 40).transpose(1, 0, 2)
    got = roundtrip(array)
    assert np.array_equal(got, array)
    assert got.strides == array.strides


@pytest.mark.parametrize("size", [10, 100_000])
def test_read_only_array_comes_back_writeable(size: int) -> None:
    array = np.arange(size)
    array.flags.writeable = False
    got = roundtrip(array)
    assert np.array_equal(got, array) and got.flags.writeable
    got[0] = 99  # received arrays do not share memory with anything


def test_received_arrays_are_independent() -> None:
    array = np.zeros(100_000)
    first, second = roundtrip([array, array.copy()])
    first[:] = 1
    assert not second.any() and not array.any()


def test_arrays_in_nested_containers() -> None:
    value: Any = {"a": [np.arange(5), (np.ones((300, 300), order="F"), "x")], "b": np.float32(2)}
    got = roundtrip(value)
    assert_same_array(got["a"][0], value["a"][0])
    assert_same_array(got["a"][1][0], value["a"][1][0])
    assert got["a"][1][1] == "x" and got["b"] == np.float32(2)


def test_frames_are_bounded_and_count_grows_with_size(small_frames: int) -> None:
    arrays = [np.full(30, i, dtype="u8") for i in range(50)]  # 240 bytes each
    frames = serialize(arrays)
    assert max(len(f) for f in frames) <= small_frames
    # 50 buffers of 240 bytes pack into 12 frames of 1000, not 50 frames.
    header = frames[0]
    assert struct.unpack_from("<4sQII", header)[3] == 50
    assert len(frames) == 1 + struct.unpack_from("<4sQII", header)[2] + 12
    got_arrays: Any = deserialize(frames)
    for i, got in enumerate(got_arrays):
        assert_same_array(got, arrays[i])


def test_large_inband_value_is_split(small_frames: int) -> None:
    text = "é" * 10_000
    frames = serialize(text)
    assert len(frames) > 10 and max(len(f) for f in frames) <= small_frames
    assert deserialize(frames) == text


def test_array_larger_than_max_frame(small_frames: int) -> None:
    array = np.arange(10_000, dtype="<f8").reshape(100, 100)
    frames = serialize(array)
    assert len(frames) >= 80
    assert_same_array(deserialize(frames), array)


def test_200_mib_array() -> None:
    array = np.arange(200 * 2**20 // 8, dtype="i8")
    frames = serialize(array)
    assert max(len(f) for f in frames) == S.MAX_FRAME
    assert frames_size(frames) > array.nbytes
    got: Any = deserialize(frames)
    del frames
    assert got.shape == array.shape and got.flags.writeable
    assert np.array_equal(got, array)


# -- dicts --------------------------------------------------------------------


def test_dict_roundtrip() -> None:
    ns: dict[str, Any] = {"a": 1, "f": lambda: 2, "x": np.arange(100_000)}
    frames = serialize_dict(ns)
    assert set(frames) == {"a", "f", "x"}
    got: dict[str, Any] = deserialize_dict(frames)
    assert got["a"] == 1 and got["f"]() == 2
    assert_same_array(got["x"], ns["x"])


# -- errors -------------------------------------------------------------------


def test_unpicklable_value_is_named() -> None:
    with pytest.raises(SerializationError) as info:
        serialize(threading.Lock())
    message = str(info.value)
    assert message.startswith("cannot serialize _thread.lock <unlocked _thread.lock object")
    assert "TypeError: cannot pickle '_thread.lock' object" in message
    assert isinstance(info.value.__cause__, TypeError)


def test_unpicklable_value_in_dict_names_key() -> None:
    with pytest.raises(SerializationError) as info:
        serialize_dict({"ok": 1, "lock": threading.Lock()})
    assert str(info.value).startswith("cannot serialize 'lock' (_thread.lock <unlocked")


def test_unpicklable_nested_value() -> None:
    with pytest.raises(SerializationError, match=r"cannot serialize dict \{'gen': <generator"):
        serialize({"gen": (i for i in range(3))})


def test_long_repr_is_shortened() -> None:
    with pytest.raises(SerializationError) as info:
        serialize([threading.Lock()] + list(range(10_000)))
    assert len(str(info.value)) < 300


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __reduce__(self) -> Any:
        raise RuntimeError("no pickle")


def test_value_with_broken_repr() -> None:
    with pytest.raises(SerializationError, match="RuntimeError: no pickle") as info:
        serialize(BadRepr())
    assert "BadRepr" in str(info.value)


class FailsToLoad:
    def __reduce__(self) -> Any:
        return (_explode, ())


def _explode() -> None:
    raise ValueError("boom")


def test_failure_while_loading() -> None:
    with pytest.raises(SerializationError, match="ValueError: boom"):
        deserialize(serialize(FailsToLoad()))
    with pytest.raises(SerializationError, match="cannot deserialize 'z': ValueError"):
        deserialize_dict({"z": serialize(FailsToLoad())})


def test_missing_module_while_loading() -> None:
    stream = b"\x80\x05cno_such_module\nthing\n."
    frames = serialize(1)
    frames[0] = struct.pack("<4sQII", b"IPF1", len(stream), 1, 0)
    frames[1] = stream
    with pytest.raises(SerializationError, match="ModuleNotFoundError"):
        deserialize(frames)


def corruptions() -> list[tuple[str, Any]]:
    """Return ways to damage the frames of a value with out-of-band buffers."""
    return [
        ("no frames", lambda f: []),
        ("empty header", lambda f: [b""] + f[1:]),
        ("short header", lambda f: [f[0][:10]] + f[1:]),
        ("bad magic", lambda f: [b"XXXX" + f[0][4:]] + f[1:]),
        ("header too long", lambda f: [f[0] + b"\0"] + f[1:]),
        ("huge buffer count", lambda f: [f[0][:16] + b"\0\0\0\0\xff\xff\xff\xff"] + f[1:]),
        ("zero pickle frames", lambda f: [f[0][:12] + b"\0\0\0\0" + f[0][16:]] + f[1:]),
        ("missing data frame", lambda f: f[:-1]),
        ("extra frame", lambda f: f + [b"x"]),
        ("only header", lambda f: f[:1]),
        ("truncated pickle", lambda f: [f[0], f[1][:-1]] + f[2:]),
        ("garbage pickle", lambda f: [f[0], b"\x00" * len(f[1])] + f[2:]),
        ("truncated data", lambda f: f[:2] + [f[2][:-1]]),
        ("swapped frames", lambda f: [f[0], f[2], f[1]]),
        ("not bytes", lambda f: [f[0], None, f[2]]),
    ]


@pytest.mark.parametrize("name,damage", corruptions(), ids=[c[0] for c in corruptions()])
def test_corrupt_frames(name: str, damage: Any) -> None:
    frames = serialize(np.arange(100_000))
    assert len(frames) == 3
    with pytest.raises(SerializationError, match="cannot deserialize frames"):
        deserialize(damage(frames))


@given(st.lists(st.binary(max_size=40), max_size=4))
def test_random_frames_raise_serialization_error(frames: list[bytes]) -> None:
    with pytest.raises(SerializationError):
        deserialize(frames)


@given(st.data())
def test_truncated_frames_raise_serialization_error(data: st.DataObject) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "MAX_FRAME", 50)
        mp.setattr(S, "INBAND_LIMIT", 10)
        frames = serialize([np.arange(20), "text" * 20])
    index = data.draw(st.integers(0, len(frames) - 1))
    cut = data.draw(st.integers(0, len(frames[index]) - 1))
    frames[index] = frames[index][:cut]
    with pytest.raises(SerializationError):
        deserialize(frames)


def test_import_does_not_import_numpy() -> None:
    code = (
        "import sys, ipython1.common.serialize as s\n"
        "assert s.deserialize(s.serialize([1, lambda: 2]))[1]() == 2\n"
        "print('numpy' in sys.modules)"
    )
    root = os.path.dirname(os.path.dirname(ipython1.__file__))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


def test_unsplit_zero_copy_frames_round_trip_and_rebuild_in_place():
    import numpy as np

    from ipython1.common.serialize import deserialize, serialize

    a = np.arange(300_000, dtype=np.float64).reshape(1000, 300)
    frames = serialize({"a": a, "k": 1}, max_frame=None, copy=False)
    assert isinstance(frames[-1], memoryview)  # the array's own memory, not a copy
    # As received from the data channel: one bytearray per frame.
    received = [bytearray(f) for f in frames]
    back = deserialize(received)
    assert np.array_equal(back["a"], a) and back["k"] == 1
    assert back["a"].base is received[-1] or np.shares_memory(
        back["a"], np.frombuffer(received[-1], dtype=np.uint8))
    back["a"][0, 0] = -1  # writeable

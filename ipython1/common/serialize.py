"""Value <-> frames: the wire format of every value in ipython1.

A value becomes a list of ``bytes`` *frames* that the controller relays
without ever unpickling them. Values are pickled with cloudpickle and pickle
protocol 5, so interactively defined functions, lambdas and closures travel,
and large contiguous buffers (NumPy arrays) go out-of-band, not through the
pickle stream.

Frame layout::

    frames[0]                   header
    frames[1 : 1 + P]           the pickle stream, cut into P >= 1 frames
    frames[1 + P :]             every out-of-band buffer, concatenated in
                                pickling order, cut into frames

    header = struct "<4sQII"    magic b"IPF1", pickle stream length,
                                P (number of pickle frames), B (number of
                                out-of-band buffers)
           + B x struct "<Q"    the length in bytes of each buffer

No frame but the header (20 bytes + 8 per buffer) is larger than
`MAX_FRAME`. Buffers smaller than `INBAND_LIMIT`
stay in the pickle stream, so a small value is two frames. Because buffers
are packed back to back, the frame count grows with the total size, never
with the number of buffers.

Every NumPy array that comes back is writeable: a received value is a private
copy, so the read-only flag of the sender's array protects nothing.
"""

from __future__ import annotations

import io
import mmap
import pickle
import reprlib
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import cloudpickle

from ipython1.common.errors import SerializationError

__all__ = [
    "INBAND_LIMIT",
    "MAX_FRAME",
    "deserialize",
    "deserialize_dict",
    "frames_size",
    "serialize",
    "serialize_dict",
]

MAX_FRAME = 64 * 2**20
"""The largest frame, in bytes."""

INBAND_LIMIT = 64 * 2**10
"""Buffers smaller than this many bytes stay in the pickle stream."""

_MAGIC = b"IPF1"
_HEADER = struct.Struct("<4sQII")
_LENGTH = struct.Struct("<Q")

_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60
_short_repr.maxlevel = 2


def serialize(obj: object, max_frame: int | None = 0, copy: bool = True) -> list[Any]:
    """Turn obj into frames; raise SerializationError if it cannot be pickled.

    ``max_frame=0`` means `MAX_FRAME`. For the data channel, ``max_frame=None``
    keeps each out-of-band buffer one frame (so the receiver can rebuild it in
    place), and ``copy=False`` leaves buffers as memoryviews of obj's own memory
    (valid while obj is unchanged).
    """
    return _serialize(obj, None, max_frame, copy)


def deserialize(frames: Sequence[bytes]) -> object:
    """Rebuild the value that `serialize` turned into frames."""
    return _deserialize(frames, None)


def serialize_dict(ns: Mapping[str, object], max_frame: int | None = 0,
                   copy: bool = True) -> dict[str, list[Any]]:
    """Serialize each value of a namespace (see `serialize` for the options)."""
    return {key: _serialize(value, key, max_frame, copy) for key, value in ns.items()}


def deserialize_dict(frames_by_key: Mapping[str, Sequence[bytes]]) -> dict[str, object]:
    """Deserialize each value of a namespace."""
    return {key: _deserialize(frames, key) for key, frames in frames_by_key.items()}


def frames_size(frames: Iterable[bytes]) -> int:
    """Return the total number of bytes in frames."""
    return sum(len(frame) for frame in frames)


# -- serializing --------------------------------------------------------------


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """A cloudpickle Pickler that sends NumPy arrays out-of-band when it can."""

    def reducer_override(self, obj: Any) -> Any:
        """Reduce plain NumPy arrays ourselves; leave the rest to cloudpickle."""
        # An array can only exist if something imported numpy already.
        np = sys.modules.get("numpy")
        if np is not None and type(obj) is np.ndarray and not obj.dtype.hasobject:
            return _reduce_array(np, obj)
        return super().reducer_override(obj)


def _reduce_array(np: Any, array: Any) -> Any:
    """Reduce an array so that its data can travel as one out-of-band buffer."""
    if not _is_dense(array):
        # NumPy pickles a strided array in-band through tobytes(); a dense
        # copy in the same axis order costs the same copy but goes
        # out-of-band, and keeps a Fortran-like layout Fortran-ordered.
        array = np.array(array, order="K")
    reduced = array.__reduce_ex__(5)
    rebuild, args = reduced[:2]
    if args and isinstance(args[0], pickle.PickleBuffer) and args[0].raw().readonly:
        # Pickle would rebuild a read-only array; ask for a writeable one.
        return (_rebuild_writeable, (rebuild, *args), *reduced[2:])
    return reduced


def _is_dense(array: Any) -> bool:
    """Tell whether array's items fill one memory block with no gaps."""
    expected = array.itemsize
    axes = sorted(zip(array.strides, array.shape, strict=True))
    for stride, size in axes:
        if size == 1:
            continue  # the stride of a length-1 axis is never used
        if stride != expected:
            return False
        expected *= size
    return True


def _rebuild_writeable(rebuild: Callable[..., Any], buf: Any, *args: Any) -> Any:
    """Call NumPy's rebuild function on a writeable version of a read-only buffer."""
    if isinstance(buf, memoryview) and buf.readonly:
        owner = buf.obj
        # An out-of-band buffer is a private bytearray (or mapping, from the
        # data channel) made for deserialize; pickle only wrapped it
        # read-only, so use it as is, without a copy.
        if type(owner) in _PRIVATE and len(owner) == buf.nbytes:
            return rebuild(owner, *args)
    if isinstance(buf, (bytes, memoryview)):
        buf = bytearray(buf)  # in-band, hence small
    return rebuild(buf, *args)


def _serialize(obj: object, key: str | None, max_frame: int | None = 0,
               copy: bool = True) -> list[Any]:
    """Turn obj into frames; name key in errors."""
    inband_limit = INBAND_LIMIT
    if max_frame == 0:
        max_frame = MAX_FRAME  # read now: tests and callers may change it
    buffers: list[memoryview] = []

    def take_buffer(buffer: pickle.PickleBuffer) -> bool:
        """Take a large buffer out-of-band; return True to leave a small one in-band."""
        try:
            view = buffer.raw()
        except BufferError:
            return True  # not contiguous: pickle reports it in-band
        if view.nbytes < inband_limit:
            return True
        buffers.append(view)
        return False

    try:
        with io.BytesIO() as file:
            _Pickler(file, protocol=5, buffer_callback=take_buffer).dump(obj)
            stream = file.getvalue()
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {_describe(obj, key)}: {type(exc).__name__}: {exc}"
        ) from exc

    if max_frame is None:
        data: list[Any] = [view if not copy else bytes(view) for view in buffers]
        return [_header(stream, 1, buffers), stream, *data]
    stream_frames = [stream] if len(stream) <= max_frame else _pack([memoryview(stream)], max_frame)
    return [_header(stream, len(stream_frames), buffers), *stream_frames,
            *_pack(buffers, max_frame)]


def _header(stream: bytes, stream_count: int, buffers: list[memoryview]) -> bytes:
    return b"".join([_HEADER.pack(_MAGIC, len(stream), stream_count, len(buffers)),
                     *(_LENGTH.pack(view.nbytes) for view in buffers)])


def _pack(views: Iterable[memoryview], max_frame: int) -> list[bytes]:
    """Concatenate byte views into frames of at most max_frame bytes, copying once."""
    frames: list[bytes] = []
    pieces: list[memoryview] = []
    room = max_frame
    for view in views:
        start, end = 0, view.nbytes
        while start < end:
            piece = view[start : start + room]
            pieces.append(piece)
            start += len(piece)
            room -= len(piece)
            if room == 0:
                frames.append(b"".join(pieces))
                pieces, room = [], max_frame
    if pieces:
        frames.append(b"".join(pieces))
    return frames


def _describe(obj: object, key: str | None) -> str:
    """Name a value for an error message: its key, type and a short repr."""
    cls = type(obj)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    what = f"{name} {_short_repr.repr(obj)}"
    return what if key is None else f"{key!r} ({what})"


# -- deserializing ------------------------------------------------------------


def _deserialize(frames: Sequence[bytes], key: str | None) -> object:
    """Rebuild a value from frames; name key in errors."""
    try:
        stream, buffers = _split(frames)
        return pickle.loads(stream, buffers=buffers)
    except Exception as exc:
        # Unpickling runs arbitrary reconstructors (and imports), so any
        # failure means these frames cannot become a value here.
        what = "frames" if key is None else f"{key!r}"
        raise SerializationError(f"cannot deserialize {what}: {type(exc).__name__}: {exc}") from exc


class _CorruptFrames(Exception):
    """Frames do not follow the layout of the module docstring."""


def _split(frames: Sequence[bytes]) -> tuple[bytes, list[bytearray]]:
    """Check frames against their header; return the pickle stream and buffers."""
    if len(frames) == 0:
        raise _CorruptFrames("no frames")
    header = frames[0]
    if len(header) < _HEADER.size:
        raise _CorruptFrames("header frame too short")
    magic, stream_size, stream_count, buffer_count = _HEADER.unpack_from(header)
    if magic != _MAGIC:
        raise _CorruptFrames(f"bad magic {bytes(magic)!r}, expected {_MAGIC!r}")
    if len(header) != _HEADER.size + buffer_count * _LENGTH.size:
        raise _CorruptFrames(f"header frame of {len(header)} bytes for {buffer_count} buffers")
    sizes = [size for (size,) in _LENGTH.iter_unpack(memoryview(header)[_HEADER.size :])]
    if stream_count < 1 or len(frames) < 1 + stream_count:
        raise _CorruptFrames(f"{len(frames)} frames, pickle stream alone needs {1 + stream_count}")
    stream_frames = frames[1 : 1 + stream_count]
    stream = stream_frames[0] if stream_count == 1 else b"".join(stream_frames)
    if len(stream) != stream_size:
        raise _CorruptFrames(f"pickle stream of {len(stream)} bytes, expected {stream_size}")
    data_frames = frames[1 + stream_count :]
    if frames_size(data_frames) != sum(sizes):
        raise _CorruptFrames(f"{frames_size(data_frames)} bytes of buffers, expected {sum(sizes)}")
    return stream, _unpack(data_frames, sizes)


# Writable frames received for this value alone (transport.data.buffers.buffer_for).
_PRIVATE = (bytearray, mmap.mmap)


def _unpack(frames: Sequence[bytes], sizes: Sequence[int]) -> list[bytearray]:
    """Cut concatenated frames into buffers of the given sizes, copying once."""
    # bytearray, not bytes: NumPy arrays built on bytes would be read-only.
    if len(frames) == len(sizes) and all(
            type(f) in _PRIVATE and len(f) == s for f, s in zip(frames, sizes, strict=True)):
        # One received buffer per frame (the data channel): rebuild in place.
        return list(frames)  # type: ignore[arg-type]
    views = [memoryview(frame).cast("B") for frame in frames]
    buffers: list[bytearray] = []
    index, offset = 0, 0
    for size in sizes:
        pieces: list[memoryview] = []
        while size:
            view = views[index]
            piece = view[offset : offset + size]
            pieces.append(piece)
            size -= len(piece)
            offset += len(piece)
            if offset == len(view):
                index, offset = index + 1, 0
        buffers.append(bytearray().join(pieces))
    return buffers

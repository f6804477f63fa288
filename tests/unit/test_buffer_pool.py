"""The receive buffer pool: reuse only what nothing uses, keep little, not for long."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np
import pytest

from ipython1.transport.data import buffers as dc
from tests.conftest import wait_until

PAGE = mmap.PAGESIZE
MIB = 2**20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def pool(clock):
    p = dc.BufferPool(64 * MIB, idle=30.0, clock=clock, reaper=False)
    yield p
    p.close()


def test_a_buffer_nothing_refers_to_is_handed_out_again(pool):
    first = pool.acquire(MIB)
    first[:4] = b"abcd"
    key = id(first)
    del first
    again = pool.acquire(MIB)
    assert id(again) == key and again[:4] == b"abcd"  # the same memory, not a fresh one
    assert pool.stats()["reused"] == 1 and pool.stats()["made"] == 1


def test_a_buffer_in_use_is_never_handed_out(pool):
    held = pool.acquire(MIB)
    other = pool.acquire(MIB)
    assert other is not held
    assert pool.stats() == {"tracked": 2, "unused": 0, "unused_bytes": 0, "reused": 0, "made": 2}


@pytest.mark.parametrize("keep", [
    lambda buf: np.frombuffer(buf, dtype=np.float64).reshape(2, -1)[1, 3:7],  # a view of an array
    lambda buf: memoryview(buf)[100:200],  # a slice of a memoryview
    lambda buf: memoryview(memoryview(buf)).cast("d")[5:9],  # a view of a view
    lambda buf: (ctypes.c_char * 16).from_buffer(buf, 64),  # raw memory through ctypes
])
def test_whatever_still_refers_to_the_memory_keeps_it_from_reuse(pool, keep):
    buf = pool.acquire(MIB)
    buf[:] = b"\x11" * MIB
    kept = keep(buf)
    before = bytes(memoryview(kept).cast("B"))
    del buf
    # More receives of the same size: none may land in the memory kept above.
    fresh = [pool.acquire(MIB) for _ in range(3)]
    for f in fresh:
        f[:] = b"\x22" * MIB
    assert bytes(memoryview(kept).cast("B")) == before
    assert pool.stats()["reused"] == 0
    del fresh, f
    assert pool.stats()["unused"] == 3  # the three, not the one kept
    del kept
    assert pool.stats()["unused"] == 4


def test_a_slightly_larger_buffer_is_cut_to_size_a_much_larger_one_is_not(pool):
    big = pool.acquire(8 * MIB)
    big[-1:] = b"z"
    big[:1] = b"a"
    key = id(big)
    del big
    small = pool.acquire(MIB)  # 8x smaller: keep the big one for its own size
    assert id(small) != key and len(small) == MIB
    cut = pool.acquire(7 * MIB + 123)  # within 1/POOL_SLACK: reuse, exactly the size asked
    assert id(cut) == key and len(cut) == 7 * MIB + 123 and cut[:1] == b"a"


def test_the_smallest_fit_is_taken(pool):
    a, b = pool.acquire(MIB + 2 * PAGE), pool.acquire(MIB)
    ids = (id(a), id(b))
    del a, b
    assert id(pool.acquire(MIB)) == ids[1]


def test_unused_buffers_are_unmapped_beyond_the_limit_oldest_first(clock):
    pool = dc.BufferPool(3 * MIB, clock=clock, reaper=False)
    held = [pool.acquire(MIB) for _ in range(5)]
    views = [memoryview(h) for h in held]
    del views
    for i in range(5):  # released one by one, a second apart
        clock.now = float(i)
        last = held.pop(0)
        del last
        pool.trim()
    stats = pool.stats()
    assert stats["unused_bytes"] == 3 * MIB and stats["tracked"] == 3
    # The two released first were unmapped: the next three acquires reuse the
    # later ones, the fourth maps fresh memory.
    got = [pool.acquire(MIB) for _ in range(4)]
    assert pool.stats()["reused"] == 3 and pool.stats()["made"] == 6
    del got
    pool.close()


def test_unused_buffers_are_unmapped_after_idle_seconds(pool, clock):
    buf = pool.acquire(MIB)
    buf2 = pool.acquire(2 * MIB)
    del buf
    clock.now = 10.0
    pool.trim()  # first seen unused at 10 s
    clock.now = 39.0
    assert pool.stats()["unused"] == 1
    del buf2
    clock.now = 40.0  # the first unmapped; the second first seen unused now
    assert pool.stats() == {"tracked": 1, "unused": 1, "unused_bytes": 2 * MIB,
                            "reused": 0, "made": 2}
    clock.now = 69.9
    assert pool.stats()["tracked"] == 1
    clock.now = 70.0
    assert pool.stats()["tracked"] == 0


def test_the_reaper_releases_idle_buffers_and_then_ends():
    pool = dc.BufferPool(64 * MIB, idle=0.1)
    buf = pool.acquire(MIB)
    assert pool._reaper is not None and pool._reaper.is_alive()
    del buf
    reaper = pool._reaper
    wait_until(lambda: pool._reaper is None, 10, "the reaper to release the buffer and end")
    reaper.join(5)
    assert not reaper.is_alive() and pool._entries == []


def test_a_limit_of_zero_keeps_nothing_and_large_ones_are_not_kept(clock):
    off = dc.BufferPool(0, clock=clock, reaper=False)
    buf = off.acquire(MIB)
    del buf
    assert off.stats()["tracked"] == 0 and off.acquire(MIB) is not None
    small = dc.BufferPool(MIB, clock=clock, reaper=False)
    big = small.acquire(2 * MIB)  # larger than the limit: never worth keeping
    assert small.stats()["tracked"] == 0 and len(big) == 2 * MIB


def test_buffer_for_uses_the_process_pool_for_large_frames_only(monkeypatch, clock):
    pool = dc.BufferPool(64 * MIB, clock=clock, reaper=False)
    monkeypatch.setattr(dc, "POOL", pool)
    assert type(dc.buffer_for(dc.HUGE_MIN - 1)) is bytearray
    buf = dc.buffer_for(dc.HUGE_MIN)
    assert type(buf) is mmap.mmap and pool.stats()["tracked"] == 1
    del buf
    assert type(dc.buffer_for(dc.HUGE_MIN)) is mmap.mmap and pool.stats()["reused"] == 1
    pool.close()


def test_the_limit_comes_from_the_environment_in_mib(monkeypatch):
    monkeypatch.delenv(dc.POOL_ENV, raising=False)
    assert dc.pool_limit_from_env() == dc.POOL_DEFAULT_MB * MIB
    monkeypatch.setenv(dc.POOL_ENV, "0")
    assert dc.pool_limit_from_env() == 0
    monkeypatch.setenv(dc.POOL_ENV, " 256 ")
    assert dc.pool_limit_from_env() == 256 * MIB
    for bad in ("1G", "-1", "lots"):
        monkeypatch.setenv(dc.POOL_ENV, bad)
        with pytest.raises(ValueError, match=f"{dc.POOL_ENV} must be a whole number of MiB"):
            dc.pool_limit_from_env()

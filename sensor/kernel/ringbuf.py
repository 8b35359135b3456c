"""Read a BPF ring buffer through its mmap'd pages, with no per-event Python call.

The kernel maps a ring buffer as: one consumer page (read-write, holds the consumer
position), then one producer page (read-only, holds the producer position), then the
data area mapped twice in a row, so that a record that wraps around the end is still
contiguous. Each record starts with an 8-byte header: a u32 length whose top bits say
"still being written" (busy) or "discarded", and a u32 page offset. Records are
8-byte aligned. A Numba function copies whole committed records into a batch and
advances the consumer position; Python waits with epoll on the map fd in between.
"""

from __future__ import annotations

import mmap
import select
from dataclasses import dataclass

import numba
import numpy as np

_BUSY = np.uint32(1 << 31)
_DISCARD = np.uint32(1 << 30)
_LEN_MASK = np.uint32((1 << 30) - 1)
_HEADER = np.uint64(8)
_ALIGN = np.uint64(7)


@numba.njit(cache=True, nogil=True)
def _drain(consumer, producer, data32, data, mask, out, offsets, lengths):
    """Copy committed records into out, record i at offsets[i]. Returns (count, bytes
    used, whether it stopped because `out` or `offsets` was full).

    Stops at the producer position read on entry, at a record still being written,
    or when `out` or `offsets` is full; the consumer position then covers exactly what
    was copied (or discarded), so nothing is skipped or read twice. It is written once
    per call: the producer reads it from another CPU, and a store per record would
    bounce its cache line between the two."""
    # Positions are u64 throughout: mixing in signed ints would make Numba use floats.
    cons = consumer[0]
    prod = producer[0]
    n = 0
    used = np.uint64(0)
    full = False
    while cons < prod:
        if n == offsets.size:
            full = True
            break
        pos = cons & mask
        header = data32[pos >> np.uint64(2)]
        if header & _BUSY:
            break
        size = np.uint64(header & _LEN_MASK)
        if not header & _DISCARD:
            if used + size > out.size:
                full = True
                break
            start = pos + _HEADER
            for i in range(size):
                out[used + i] = data[start + i]
            offsets[n] = used
            lengths[n] = size
            n += 1
            used += (size + _ALIGN) & ~_ALIGN
        cons += (size + _HEADER + _ALIGN) & ~_ALIGN
    consumer[0] = cons
    return n, used, full


@numba.njit(cache=True, nogil=True)
def group(buf, offsets, lengths, itemsizes, keys, counts):
    """Sort records into groups of one kind and one row width, in one pass and no sort.

    keys[i] gets kind * W + width // 8, where W = counts.shape[1], or -1 for a kind
    with no itemsize (or a record too short to name one); counts[kind, width // 8] how many records each group has. A
    record's row width is its length rounded up to 8 bytes, at most its kind's itemsize
    (itemsizes are multiples of 8)."""
    counts[:] = 0
    per_kind = counts.shape[1]
    for i in range(offsets.size):
        at = np.int64(offsets[i])
        kind = np.int64(buf[at]) | (np.int64(buf[at + 1]) << 8) if lengths[i] >= 2 else itemsizes.size
        if kind >= itemsizes.size or itemsizes[kind] == 0:
            keys[i] = -1
            continue
        width = min((np.int64(lengths[i]) + 7) & ~7, itemsizes[kind])
        keys[i] = kind * per_kind + width // 8
        counts[kind, width // 8] += 1


@numba.njit(cache=True, nogil=True)
def scatter(buf, offsets, lengths, keys, cursor, out):
    """Copy each grouped record to its group's next row of `out`: cursor (shaped as
    group's counts) holds where that row starts, and the row is (key % W) * 8 bytes
    wide. What a shorter record leaves of its row is zero-filled."""
    per_kind = cursor.shape[1]
    flat = cursor.reshape(-1)
    for i in range(offsets.size):
        key = keys[i]
        if key < 0:
            continue
        # Unsigned indices: signed ones make Numba check each for wrap-around.
        width = np.uint64((key % per_kind) * 8)
        row = np.uint64(flat[key])
        flat[key] = row + width
        size = min(np.uint64(lengths[i]), width)
        at = offsets[i]
        for j in range(size):
            out[row + j] = buf[at + j]
        for j in range(size, width):
            out[row + j] = 0


def _load_compiled_drain() -> None:
    """Have Numba load (or compile) the drain for the argument types a ring's pages
    have (the producer's are read-only) before events wait on it, without touching a
    ring: an empty one, in plain memory."""
    zero, readonly = np.zeros(1, np.uint64), np.frombuffer(bytes(16), np.uint8)
    _drain(zero, np.frombuffer(bytes(8), np.uint64), readonly.view(np.uint32), readonly, np.uint64(15),
           np.zeros(8, np.uint8), np.zeros(1, np.uint64), np.zeros(1, np.uint32))


@dataclass
class RawBatch:
    """Records copied out of the ring: record i is buf[offsets[i]:offsets[i] + lengths[i]]."""
    buf: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return self.offsets.size


class RingReader:
    """Consumer of one BPF_MAP_TYPE_RINGBUF, given its fd and data size in bytes."""

    def __init__(self, map_fd: int, size: int, batch_bytes: int = 8 << 20, batch_records: int = 65536):
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError(f"ring buffer size {size} is not a power-of-two number of pages")
        page = mmap.PAGESIZE
        self._consumer_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._data_map = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._consumer = np.frombuffer(self._consumer_map, np.uint64, count=1)
        self._producer = np.frombuffer(self._data_map, np.uint64, count=1)
        self._data = np.frombuffer(self._data_map, np.uint8, offset=page)
        self._data32 = self._data.view(np.uint32)
        self._data[::page].sum()  # map every data page now, not during the first burst
        self.size = size
        self._mask = np.uint64(size - 1)
        self._out = np.zeros(batch_bytes, np.uint8)
        self._out.fill(0)  # fault the pages in now, not on the first busy batch
        self._offsets = np.empty(batch_records, np.uint64)
        self._lengths = np.empty(batch_records, np.uint32)
        # Edge-triggered: a wait returns on the kernel's next wake-up (every N records,
        # or at once for urgent ones), not whenever one record is there, so that
        # batches stay large under load instead of a busy loop of small drains.
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN | select.EPOLLET)
        self.full = False
        _load_compiled_drain()

    def wait(self, timeout_s: float) -> None:
        """Sleep until the kernel's next wake-up, or the timeout (the batching timer);
        not at all when the last drain stopped at a full batch."""
        if not self.full:
            self._epoll.poll(timeout_s)

    def pending(self) -> int:
        """Bytes committed or being written that the consumer has not read yet."""
        return int(self._producer[0] - self._consumer[0])

    def drain(self) -> RawBatch:
        """Everything committed now, up to one batch. The batch's arrays are reused by
        the next drain: copy what must outlive it."""
        n, used, self.full = _drain(self._consumer, self._producer, self._data32, self._data, self._mask,
                                    self._out, self._offsets, self._lengths)
        return RawBatch(self._out[:used], self._offsets[:n], self._lengths[:n])

    def close(self) -> None:
        self._epoll.close()
        del self._consumer, self._producer, self._data, self._data32
        self._consumer_map.close()
        self._data_map.close()

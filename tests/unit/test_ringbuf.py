"""The ring-buffer drain, on a simulated ring laid out as the kernel maps it (the kernel
side is exercised in tests/kernel). Both the Numba function and its Python source run."""

import numpy as np
import pytest

from sensor.kernel import ringbuf

SIZE = 256  # data bytes; the simulation maps them twice, as the kernel does
BUSY, DISCARD = 1 << 31, 1 << 30


class Ring:
    def __init__(self, start=0):
        self.consumer = np.array([start], np.uint64)
        self.producer = np.array([start], np.uint64)
        self.data = np.zeros(2 * SIZE, np.uint8)

    def put(self, payload: bytes, flags=0):
        pos = int(self.producer[0]) % SIZE
        header = (len(payload) | flags).to_bytes(4, "little") + bytes(4)
        for i, byte in enumerate(header + payload):
            # Write through both mappings so a record crossing the end reads contiguously.
            self.data[(pos + i) % SIZE] = byte
            self.data[(pos + i) % SIZE + SIZE] = byte
        self.producer[0] += (len(payload) + 8 + 7) & ~7
        return pos

    def drain(self, fn, out_bytes=1024, max_records=64):
        out = np.zeros(out_bytes, np.uint8)
        offsets = np.zeros(max_records, np.uint64)
        lengths = np.zeros(max_records, np.uint32)
        n, used, self.full = fn(self.consumer, self.producer, self.data.view(np.uint32), self.data, np.uint64(SIZE - 1),
                     out, offsets, lengths)
        return [bytes(out[int(o):int(o) + int(l)]) for o, l in zip(offsets[:n], lengths[:n])]


@pytest.fixture(params=["numba", "python"])
def drain(request):
    return ringbuf._drain if request.param == "numba" else ringbuf._drain.py_func


def test_records_in_order_and_consumer_advanced(drain):
    ring = Ring()
    payloads = [b"a" * 5, b"bb" * 8, b"c" * 13]
    for p in payloads:
        ring.put(p)
    assert ring.drain(drain) == payloads
    assert ring.consumer[0] == ring.producer[0]
    assert ring.drain(drain) == []


def test_a_record_wrapping_the_end_reads_whole(drain):
    ring = Ring(start=SIZE - 16)  # header fits, payload crosses the end
    ring.put(bytes(range(40)))
    assert ring.drain(drain) == [bytes(range(40))]


def test_busy_record_stops_the_drain_until_committed(drain):
    ring = Ring()
    ring.put(b"first")
    busy_at = ring.put(b"second", flags=BUSY)
    ring.put(b"third")
    assert ring.drain(drain) == [b"first"]
    ring.data[busy_at + 3] &= 0x7F  # the kernel clears the busy bit on commit
    ring.data[busy_at + 3 + SIZE] &= 0x7F
    assert ring.drain(drain) == [b"second", b"third"]


def test_discarded_records_are_skipped(drain):
    ring = Ring()
    ring.put(b"kept")
    ring.put(b"dropped", flags=DISCARD)
    ring.put(b"also kept")
    assert ring.drain(drain) == [b"kept", b"also kept"]
    assert ring.consumer[0] == ring.producer[0]


def test_a_full_batch_leaves_the_rest_for_the_next(drain):
    ring = Ring()
    for i in range(5):
        ring.put(bytes([i]) * 24)
    assert len(ring.drain(drain, out_bytes=50)) == 2 and ring.full  # 24 + 24 fit, the third does not
    assert len(ring.drain(drain, max_records=2)) == 2 and ring.full
    assert len(ring.drain(drain)) == 1 and not ring.full
    assert ring.consumer[0] == ring.producer[0]


@pytest.mark.parametrize("impl", ["numba", "python"])
def test_group_and_scatter_rows_by_kind_and_width(impl):
    group, scatter = (ringbuf.group, ringbuf.scatter) if impl == "numba" else \
        (ringbuf.group.py_func, ringbuf.scatter.py_func)
    # Kind 1 rows are at most 16 bytes wide, kind 2 is unknown (itemsize 0).
    records = [bytes([1, 0, 7, 7, 7]), bytes([1, 0]) + bytes(range(3, 20)), bytes([2, 0, 9]), bytes([1, 0, 5]), b"\1"]
    buf = np.zeros(64, np.uint8)
    offsets, lengths, at = [], [], 0
    for record in records:
        buf[at:at + len(record)] = list(record)
        offsets.append(at), lengths.append(len(record))
        at += (len(record) + 7) & ~7
    offsets, lengths = np.array(offsets, np.uint64), np.array(lengths, np.uint32)
    keys, counts = np.empty(len(records), np.int64), np.full((3, 3), 99, np.int64)
    group(buf, offsets, lengths, np.array([0, 16, 0], np.int64), keys, counts)
    assert keys.tolist() == [1 * 3 + 1, 1 * 3 + 2, -1, 1 * 3 + 1, -1]  # too long: cut to 16; too short: unknown
    assert counts.tolist() == [[0, 0, 0], [0, 2, 1], [0, 0, 0]]
    cursor = np.array([[0, 0, 0], [0, 0, 16]], np.int64)  # two 8-byte rows, then one 16-byte row
    out = np.full(32, 0xFF, np.uint8)
    scatter(buf, offsets, lengths, keys, cursor, out)
    assert out[:8].tolist() == [1, 0, 7, 7, 7, 0, 0, 0] and out[8:16].tolist() == [1, 0, 5, 0, 0, 0, 0, 0]
    assert bytes(out[16:32]) == records[1][:16]
    assert cursor.tolist() == [[0, 0, 0], [0, 16, 32]]


def test_loading_the_compiled_drain_touches_no_ring():
    ringbuf._load_compiled_drain()
    assert any(not sig[1].mutable for sig in ringbuf._drain.signatures)  # the read-only pages' variant

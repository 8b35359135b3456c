"""The ring-buffer drain, on a simulated ring laid out as the kernel maps it (the kernel
side is exercised in tests/kernel). Both the Numba function and its Python source run."""

import numpy as np
import pytest

from sensor import ringbuf

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
def test_gather_zero_fills_short_records(impl):
    fn = ringbuf.gather if impl == "numba" else ringbuf.gather.py_func
    buf = np.arange(1, 33, dtype=np.uint8)
    offsets = np.array([0, 8, 16], np.uint64)
    lengths = np.array([8, 4, 16], np.uint32)
    out = np.zeros((2, 8), np.uint8)
    assert fn(buf, offsets, lengths, np.array([False, True, True]), out) == 2
    assert out.tolist() == [[9, 10, 11, 12, 0, 0, 0, 0], list(range(17, 25))]


def test_loading_the_compiled_drain_touches_no_ring():
    ringbuf._load_compiled_drain()
    assert any(not sig[1].mutable for sig in ringbuf._drain.signatures)  # the read-only pages' variant

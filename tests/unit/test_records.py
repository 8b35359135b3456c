"""Records: decoding kernel events, msgpack round trips, sinks and the human format."""

import io
import os

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor import FileSink, ConsoleSink, RECORD_SCHEMA_VERSION, layout, read_stream, records
from sensor.decode import Decoder, MonotonicClock
from sensor.ringbuf import RawBatch


def raw_exec(filename: bytes, cgroup_id=4242, pid=100, ppid=1, comm=b"true", tail=b"stale-bytes"):
    events = layout.events()
    event = np.zeros(1, events.structs["mayfly_exec_event"])
    hdr = event["hdr"]
    hdr["kind"] = events.constants["MAYFLY_EVENT_EXEC"]
    hdr["size"] = event.dtype.itemsize
    hdr["ktime_ns"] = 5_000_000_000
    hdr["cgroup_id"], hdr["pid"], hdr["tid"], hdr["ppid"] = cgroup_id, pid, pid, ppid
    hdr["uid"], hdr["gid"], hdr["comm"] = 1000, 1001, comm
    # The kernel leaves old bytes after the NUL of a string field.
    event["filename"] = filename + b"\0" + tail
    return event.tobytes()


def batch_of(*raw: bytes) -> RawBatch:
    """Records as the ring drain lays them out: 8-byte aligned, one after another."""
    padded = [r + bytes(-len(r) % 8) for r in raw]
    offsets = np.cumsum([0] + [len(p) for p in padded[:-1]]).astype(np.uint64)
    return RawBatch(np.frombuffer(b"".join(padded), np.uint8), offsets,
                    np.array([len(r) for r in raw], np.uint32))


def decode(raw: bytes, clock=None):
    decoder = Decoder(clock)
    arrays, unknown = decoder.split(batch_of(raw))
    (record,) = decoder.records(arrays)
    return record


def test_exec_event_decodes_to_a_record():
    clock = MonotonicClock()
    record = decode(raw_exec(b"/bin/true"), clock)
    assert record == {
        "v": RECORD_SCHEMA_VERSION, "kind": "exec", "ts": 5_000_000_000 + clock.offset, "host": os.uname().nodename,
        "cgroup_id": 4242, "filename": "/bin/true",
        "proc": {"pid": 100, "tid": 100, "ppid": 1, "uid": 1000, "gid": 1001, "comm": "true"},
    }


def test_non_utf8_names_survive():
    record = decode(raw_exec(b"/tmp/\xff\xfe"))
    assert record["filename"].encode("utf-8", "surrogateescape") == b"/tmp/\xff\xfe"


def test_unknown_kinds_are_counted_not_guessed():
    raw = bytearray(raw_exec(b"/x"))
    raw[0:2] = (999).to_bytes(2, "little")
    arrays, unknown = Decoder().split(batch_of(raw_exec(b"/a"), bytes(raw), raw_exec(b"/b")))
    assert unknown == 1
    assert [r["filename"] for r in Decoder().records(arrays)] == ["/a", "/b"]


def test_short_records_are_zero_filled():
    full = raw_exec(b"/bin/true")
    arrays, _ = Decoder().split(batch_of(full[:76]))  # ends 4 bytes into the filename
    assert arrays["exec"]["filename"][0] == b"/bin"


def test_clock_maps_monotonic_to_epoch():
    import time
    clock = MonotonicClock()
    now = clock.to_epoch(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    assert abs(now - time.time_ns()) < 50_000_000


@given(st.lists(st.fixed_dictionaries({
    "kind": st.sampled_from(["exec", "loss"]), "ts": st.integers(0, 2**63 - 1),
    "count": st.integers(0, 2**32), "reason": st.text(),
}), max_size=20))
def test_file_sink_round_trip(tmp_path_factory, items):
    path = tmp_path_factory.mktemp("sink") / "out" / "records.msgpack"
    sink = FileSink(str(path))
    written = [records.new(**item) for item in items]
    for record in written:
        sink.write(record)
    sink.close()
    with open(path, "rb") as f:
        assert list(read_stream(f)) == written
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_truncated_file_yields_complete_records_then_fails(tmp_path):
    path = tmp_path / "r.msgpack"
    good = records.new("loss", 1, count=3, reason="ring buffer full")
    path.write_bytes(records.pack(good) + records.pack(good)[:-4])
    seen = []
    with open(path, "rb") as f, pytest.raises(ValueError):
        for record in read_stream(f):
            seen.append(record)
    assert seen == [good]


def test_console_lines():
    out = io.StringIO()
    sink = ConsoleSink(out)
    sink.write(decode(raw_exec(b"/bin/true")))
    sink.write(records.new("loss", 0, count=7, reason="ring buffer full"))
    first, second = out.getvalue().splitlines()
    assert first.endswith("exec    cgroup=4242 pid=100 ppid=1 uid=1000 comm=true /bin/true")
    assert second.endswith("LOSS    7 events lost (ring buffer full)")


def test_records_are_msgpack_maps_with_string_keys():
    packed = records.pack(records.new("exec", 1, cgroup_id=2))
    assert msgpack.unpackb(packed, raw=True)[b"kind"] == b"exec"

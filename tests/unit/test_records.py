"""Records, sinks and the terminal format."""

import base64
import io
import json
import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor import RECORD_SCHEMA_VERSION, CallbackSink, FileSink, StreamSink, read_stream, records
from sensor.output import sinks

EXEC = records.new("event", 1_700_000_000_123_000_000, container={"id": "abc", "cgroup_id": 77},
                   proc={"pid": 5, "tid": 5, "ppid": 1, "uid": 0, "gid": 0, "comm": "ls"},
                   evt={"type": "execve", "res": 0, "filename": "/bin/ls", "argv": ["ls", "-l"]})


def test_common_fields():
    record = records.new("lost", 42, reason="ring_full", count=3)
    assert record == {"v": RECORD_SCHEMA_VERSION, "kind": "lost", "ts": 42, "host": os.uname().nodename,
                      "reason": "ring_full", "count": 3}


def test_untrusted_bytes_survive_as_msgpack_bin():
    assert records.untrusted_text(b"/tmp/ok") == "/tmp/ok"
    assert records.untrusted_text(b"/tmp/\xff\xfe") == b"/tmp/\xff\xfe"
    record = records.new("event", 1, evt={"name": b"/tmp/\xff\xfe"})
    packed = records.pack(record)
    assert list(read_stream(io.BytesIO(packed)))[0]["evt"]["name"] == b"/tmp/\xff\xfe"
    assert msgpack.unpackb(packed, raw=True)[b"kind"] == b"event"


@given(st.lists(st.fixed_dictionaries({
    "kind": st.sampled_from(["event", "lost"]), "ts": st.integers(0, 2**63 - 1),
    "count": st.integers(0, 2**32), "reason": st.text(), "raw": st.binary(max_size=64),
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


def test_file_sink_rotates_by_size_and_keeps_n(tmp_path):
    path = tmp_path / "r.msgpack"
    size = len(records.pack(EXEC))
    sink = FileSink(str(path), max_bytes=size * 3, keep=2)
    for _ in range(10):
        sink.write(EXEC)
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["r.msgpack", "r.msgpack.1", "r.msgpack.2"]
    counts = []
    for name in files:
        with open(tmp_path / name, "rb") as f:
            counts.append(len(list(read_stream(f))))
    assert counts == [1, 3, 3]  # 10 written: the oldest three were rotated away


def test_truncated_file_yields_complete_records_then_fails(tmp_path):
    path = tmp_path / "r.msgpack"
    path.write_bytes(records.pack(EXEC) + records.pack(EXEC)[:-4])
    seen = []
    with open(path, "rb") as f, pytest.raises(ValueError, match="truncated record"):
        for record in read_stream(f):
            seen.append(record)
    assert seen == [EXEC]


def test_terminal_lines_escape_control_characters():
    out = io.StringIO()
    StreamSink(out, format="text").write(EXEC)
    hostile = records.new("event", EXEC["ts"], container=EXEC["container"], proc={**EXEC["proc"], "comm": "x\x1b[2J"},
                          evt={"type": "openat", "res": 3, "name": "/tmp/\n\x07fake line", "raw": b"\xff"})
    StreamSink(out, format="text").write(hostile)
    first, second = out.getvalue().splitlines()
    assert "execve" in first and "container=abc cgroup=77 pid=5 ppid=1 uid=0 comm=ls" in first
    assert "argv=['ls', '-l']" in first and first.endswith("filename=/bin/ls argv=['ls', '-l']")
    assert "\x1b" not in second and "\x07" not in second and "comm=x\\x1b[2J" in second
    assert "name=/tmp/\\x0a\\x07fake line" in second and "raw=b'\\xff'" in second


def test_stream_sink_writes_json_lines_when_not_a_terminal_and_msgpack_when_asked():
    out = io.StringIO()
    sink = StreamSink(out)
    assert sink.format == "json"
    raw_bytes = {**EXEC, "evt": {**EXEC["evt"], "name": b"\xff\x00"}}
    sink.write(EXEC)
    sink.write(raw_bytes)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == EXEC
    assert base64.b64decode(second["evt"]["name"]["$bytes"]) == b"\xff\x00"
    binary = io.TextIOWrapper(io.BytesIO())
    sink = StreamSink(binary, format="msgpack")
    sink.write(EXEC)
    sink.flush()
    assert list(read_stream(io.BytesIO(binary.buffer.getvalue()))) == [EXEC]
    with pytest.raises(ValueError, match="unknown stream format"):
        StreamSink(out, format="xml")


def test_callback_sink():
    got = []
    CallbackSink(got.append).write(EXEC)
    assert got == [EXEC]


def test_sink_specs(tmp_path):
    assert isinstance(sinks.parse("stdout"), StreamSink) and isinstance(sinks.parse("-"), StreamSink)
    assert [sinks.parse(f"stdout:{f}").format for f in ("text", "json", "msgpack")] == ["text", "json", "msgpack"]
    file_sink = sinks.parse(f"file:{tmp_path}/a/b.msgpack")
    assert isinstance(file_sink, FileSink) and file_sink.path == f"{tmp_path}/a/b.msgpack"
    for bad in ("file:", "tcp://x", "stderr", "stdout:xml"):
        with pytest.raises(ValueError, match="unknown (sink|stream format)"):
            sinks.parse(bad)

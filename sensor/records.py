"""Records: the msgpack maps Mayfly emits. Their schema is docs/records.md.

Every record has `v` (RECORD_SCHEMA_VERSION), `kind`, `ts` (ns since the epoch) and
`host`. Loss is itself a record (kind `loss`): nothing is dropped silently.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import IO, Any

import msgpack

RECORD_SCHEMA_VERSION = 1

Record = dict[str, Any]

_HOST = socket.gethostname()


def new(kind: str, ts: int, **fields: Any) -> Record:
    return {"v": RECORD_SCHEMA_VERSION, "kind": kind, "ts": ts, "host": _HOST, **fields}


def pack(record: Record) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def read_stream(f: IO[bytes]) -> Iterator[Record]:
    """Records from a file written by FileSink, in order. A truncated tail (a sensor
    killed mid-write) raises ValueError after the complete records."""
    unpacker = msgpack.Unpacker(f, raw=False)
    complete = 0  # bytes up to the end of the last whole record
    for record in unpacker:
        complete = unpacker.tell()
        yield record
    if f.seekable() and complete < f.tell():
        raise ValueError(f"truncated record at byte {complete} of {f.tell()}")


def describe(record: Record) -> str:
    """One human-readable line, local time first."""
    seconds, ns = divmod(record["ts"], 1_000_000_000)
    return f"{time.strftime('%H:%M:%S', time.localtime(seconds))}.{ns // 1_000_000:03d} {_body(record)}"


def _body(record: Record) -> str:
    kind = record["kind"]
    if kind == "exec":
        proc = record["proc"]
        return (f"exec    cgroup={record['cgroup_id']} pid={proc['pid']} ppid={proc['ppid']} "
                f"uid={proc['uid']} comm={proc['comm']} {record['filename']}")
    if kind == "loss":
        return f"LOSS    {record['count']} events lost ({record['reason']})"
    return f"{kind:<7} " + " ".join(f"{k}={v}" for k, v in record.items() if k not in ("v", "kind", "ts", "host"))

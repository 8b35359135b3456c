"""Records: the msgpack maps Mayfly emits. Their schema is docs/records.md.

Every record has `v` (RECORD_SCHEMA_VERSION), `kind`, `ts` (ns since the epoch) and
`host`. Loss is itself a record (kind `lost`): nothing is dropped silently. Strings
that come from containers are untrusted: they are str when valid UTF-8, else the raw
bytes (msgpack bin), so nothing is lost or altered.
"""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Iterator
from typing import IO, Any

import msgpack

RECORD_SCHEMA_VERSION = 1

Record = dict[str, Any]

_HOST = socket.gethostname()
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def new(kind: str, ts: int, **fields: Any) -> Record:
    return {"v": RECORD_SCHEMA_VERSION, "kind": kind, "ts": ts, "host": _HOST, **fields}


def untrusted_text(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def c_string(raw: bytes) -> str | bytes:
    """A NUL-terminated string from the kernel (whatever follows the NUL is stale)."""
    return untrusted_text(raw.split(b"\0", 1)[0])


def cmdline(argv: list[str | bytes]) -> str:
    """Arguments joined as Falco's proc.cmdline; raw-bytes arguments shown as literals."""
    return " ".join(a if isinstance(a, str) else repr(a) for a in argv)


def json_default(value: Any) -> Any:
    """What JSON makes of a record's raw bytes (a name from a container that is not
    UTF-8): {"$bytes": base64}."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    raise TypeError(f"{type(value).__name__} is not a record value")


def pack(record: Record) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def read_stream(f: IO[bytes]) -> Iterator[Record]:
    """Records from a msgpack stream, in order. A truncated tail (a sensor killed
    mid-write) raises ValueError after the complete records."""
    unpacker = msgpack.Unpacker(f, raw=False)
    complete = 0  # bytes up to the end of the last whole record
    for record in unpacker:
        complete = unpacker.tell()
        yield record
    if f.seekable() and complete < f.tell():
        raise ValueError(f"truncated record at byte {complete} of {f.tell()}")


def safe(value: Any) -> str:
    """A value for a terminal: control characters escaped, raw bytes shown as such."""
    text = repr(value) if isinstance(value, bytes) else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def describe(record: Record) -> str:
    """One human-readable line, local time first."""
    seconds, ns = divmod(record["ts"], 1_000_000_000)
    return f"{time.strftime('%H:%M:%S', time.localtime(seconds))}.{ns // 1_000_000:03d} {_body(record)}"


def _pairs(mapping: dict, skip: tuple = ()) -> str:
    return " ".join(f"{k}={safe(v)}" for k, v in mapping.items() if k not in skip)


def _body(record: Record) -> str:
    kind = record["kind"]
    if kind == "event":
        proc, evt, container = record["proc"], record["evt"], record["container"]
        head = (f"{safe(evt['type']):<12} container={safe(container['id'])} cgroup={container['cgroup_id']} "
                f"pid={proc['pid']} ppid={proc['ppid']} uid={proc['uid']} comm={safe(proc['comm'])}")
        return f"{head} {_pairs(evt, skip=('type',))}"
    if kind == "lost":
        return f"LOST         {record['count']} {record['reason']} " + _pairs(
            {"types": record.get("types", {}), "cgroups": record.get("cgroups", [])})
    return f"{kind:<12} " + _pairs(record, skip=("v", "kind", "ts", "host"))

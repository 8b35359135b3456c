"""Turn raw ring-buffer events (layouts from ebpf/events.h) into records."""

from __future__ import annotations

import time

import numpy as np

from sensor import layout, records
from sensor.records import Record


class MonotonicClock:
    """Converts bpf_ktime_get_ns() (CLOCK_MONOTONIC) to ns since the epoch."""

    def __init__(self):
        self.offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def to_epoch(self, ktime_ns: int) -> int:
        return int(ktime_ns) + self.offset


def _text(value: bytes) -> str:
    # The kernel does not zero the tail of a string field: stop at the first NUL.
    return value.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class Decoder:
    def __init__(self, clock: MonotonicClock | None = None, events: layout.Layout | None = None):
        self.clock = clock or MonotonicClock()
        self.layout = events or layout.events()
        kinds = self.layout.constants
        self._exec_kind = kinds["MAYFLY_EVENT_EXEC"]
        self._header = self.layout.structs["mayfly_event_header"]
        self._exec = self.layout.structs["mayfly_exec_event"]

    def decode(self, raw: bytes) -> Record:
        header = np.frombuffer(raw, self._header, count=1)[0]
        if header["kind"] == self._exec_kind:
            event = np.frombuffer(raw, self._exec, count=1)[0]
            return records.new("exec", self.clock.to_epoch(header["ktime_ns"]),
                               cgroup_id=int(header["cgroup_id"]), proc=self._proc(header),
                               filename=_text(event["filename"]))
        raise ValueError(f"unknown event kind {header['kind']} ({len(raw)} bytes)")

    @staticmethod
    def _proc(header: np.void) -> Record:
        return {"pid": int(header["pid"]), "tid": int(header["tid"]), "ppid": int(header["ppid"]),
                "uid": int(header["uid"]), "gid": int(header["gid"]), "comm": _text(header["comm"])}

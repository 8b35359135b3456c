"""Turn drained ring-buffer batches (layouts from ebpf/events.h) into numpy arrays and records."""

from __future__ import annotations

import time

import numpy as np

from sensor import layout, records
from sensor.records import Record
from sensor.ringbuf import RawBatch, gather


class MonotonicClock:
    """Converts bpf_ktime_get_ns() (CLOCK_MONOTONIC) to ns since the epoch."""

    def __init__(self):
        self.offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def to_epoch(self, ktime_ns: int) -> int:
        return int(ktime_ns) + self.offset

    def now(self) -> int:
        return self.to_epoch(time.clock_gettime_ns(time.CLOCK_MONOTONIC))


def text(value: bytes) -> str:
    # The kernel does not zero the tail of a string field: stop at the first NUL.
    return value.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class Decoder:
    def __init__(self, clock: MonotonicClock | None = None, events: layout.Layout | None = None):
        self.clock = clock or MonotonicClock()
        self.layout = events or layout.events()
        self.kinds = self.layout.kinds()
        self._dtypes = {number: self.layout.structs[f"mayfly_{name}_event"] for number, name in self.kinds.items()}

    def split(self, batch: RawBatch) -> tuple[dict[str, np.ndarray], int]:
        """The batch as one structured array per event kind, and the number of records
        of kinds this decoder does not know (a kernel/user contract mismatch)."""
        if not len(batch):
            return {}, 0
        starts = batch.offsets.astype(np.intp)
        kinds = batch.buf[starts].astype(np.uint16) | (batch.buf[starts + 1].astype(np.uint16) << 8)
        arrays, unknown = {}, 0
        for kind in np.unique(kinds):
            selected = kinds == kind
            dtype = self._dtypes.get(int(kind))
            if dtype is None:
                unknown += int(selected.sum())
                continue
            rows = np.zeros((int(selected.sum()), dtype.itemsize), np.uint8)
            gather(batch.buf, batch.offsets, batch.lengths, selected, rows)
            arrays[self.kinds[int(kind)]] = rows.view(dtype).reshape(-1)
        return arrays, unknown

    def records(self, arrays: dict[str, np.ndarray]) -> list[Record]:
        """One record per event, in kernel time order."""
        result = []
        for kind, events in arrays.items():
            build = getattr(self, f"_{kind}")
            result.extend(build(event) for event in events)
        result.sort(key=lambda r: r["ts"])
        return result

    def _exec(self, event: np.void) -> Record:
        header = event["hdr"]
        return records.new("exec", self.clock.to_epoch(header["ktime_ns"]), cgroup_id=int(header["cgroup_id"]),
                           proc=self._proc(header), filename=text(event["filename"]))

    @staticmethod
    def _proc(header: np.void) -> Record:
        return {"pid": int(header["pid"]), "tid": int(header["tid"]), "ppid": int(header["ppid"]),
                "uid": int(header["uid"]), "gid": int(header["gid"]), "comm": text(header["comm"])}

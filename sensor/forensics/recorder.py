"""The flight recorder: each container's recent events as the kernel captured them,
whether or not any sink emits them, so that a case can hold what led up to its
trigger (docs/cases.md).

It keeps the drained rows themselves (numpy copies, per batch and cgroup), not
records: nothing is decoded unless a case asks. Per container it keeps the last
`max_events` events, and of those only the ones of the last `max_age_s` seconds
(whichever is fewer), and at most `container_bytes`; in all, at most `total_bytes`,
the oldest going first. A container's events stay `grace_s` after it exits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np

from sensor.kernel.split import Arrays

DEFAULT_TOTAL_BYTES = 64 << 20
DEFAULT_CONTAINER_BYTES = 4 << 20
DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_AGE_S = 60.0


@dataclass
class _Chunk:
    kind: str
    rows: np.ndarray      # one kind's rows of one cgroup from one batch, oldest first

    @property
    def first_ns(self) -> int:
        return int(self.rows["hdr"]["ktime_ns"][0])


@dataclass
class _Tape:
    chunks: deque = field(default_factory=deque)
    events: int = 0
    bytes: int = 0
    gone_at_ns: int | None = None  # when its container exited


class FlightRecorder:
    def __init__(self, total_bytes: int = DEFAULT_TOTAL_BYTES, container_bytes: int = DEFAULT_CONTAINER_BYTES,
                 max_events: int = DEFAULT_MAX_EVENTS, max_age_s: float = DEFAULT_MAX_AGE_S, grace_s: float = 300.0):
        for name, limit in (("total_bytes", total_bytes), ("container_bytes", container_bytes),
                            ("max_events", max_events), ("max_age_s", max_age_s)):
            if limit <= 0:
                raise ValueError(f"the flight recorder's {name} must be positive, not {limit}")
        self.total_bytes, self.container_bytes = total_bytes, container_bytes
        self.max_events, self.max_age_ns, self.grace_ns = max_events, round(max_age_s * 1e9), round(grace_s * 1e9)
        self._tapes: dict[int, _Tape] = {}
        self.bytes = 0
        self.dropped = 0  # events let go for the total bound before their container's own bounds

    def add(self, arrays: Arrays, hosts: Container[int] = frozenset()) -> None:
        """A batch's events, but those of the cgroups in `hosts` (the host's)."""
        newest = None
        for kind, groups in arrays.items():
            for rows in groups:
                if not len(rows):
                    continue
                times = rows["hdr"]["ktime_ns"]
                newest = max(newest or 0, int(times.max()))
                cgroups = rows["hdr"]["cgroup_id"]
                if (cgroups == cgroups[0]).all():  # one cgroup's: a busy container's batch, no sort
                    runs = [(int(cgroups[0]), slice(None))]
                else:
                    order = np.argsort(cgroups, kind="stable")  # each cgroup's rows as they came
                    ordered = cgroups[order]
                    starts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
                    runs = [(int(ordered[start]), order[start:end]) for start, end in
                            zip([0, *starts.tolist()], [*starts.tolist(), len(order)])]
                for cgroup_id, taken in runs:
                    if cgroup_id in hosts:
                        continue
                    chunk = _copy(rows, taken)  # the batch's arrays are reused by the next
                    chunk_times = chunk["hdr"]["ktime_ns"]
                    if len(chunk) > 1 and (chunk_times[1:] < chunk_times[:-1]).any():  # CPUs' records interleaved
                        chunk = chunk[np.argsort(chunk_times, kind="stable")]
                    self._append(cgroup_id, _Chunk(kind, chunk))
        if newest is not None:
            self._trim(newest)

    def exited(self, cgroup_id: int, now_ns: int) -> None:
        """Its container is gone: its events go `grace_s` from now."""
        tape = self._tapes.get(cgroup_id)
        if tape is not None and tape.gone_at_ns is None:
            tape.gone_at_ns = now_ns

    def events(self, cgroup_id: int) -> dict[str, list[np.ndarray]]:
        """A container's events kept, by kind, each kind's arrays oldest first."""
        found: dict[str, list[np.ndarray]] = {}
        for chunk in list(self._tapes.get(cgroup_id, _Tape()).chunks):  # a copy: the sensor may be adding
            found.setdefault(chunk.kind, []).append(chunk.rows)
        return found

    def __contains__(self, cgroup_id: int) -> bool:
        return cgroup_id in self._tapes

    def sizes(self) -> dict[str, int]:
        """What it holds now (the `stopped` record carries it)."""
        return {"containers": len(self._tapes), "bytes": self.bytes,
                "chunks": sum(len(t.chunks) for t in self._tapes.values())}

    def _append(self, cgroup_id: int, chunk: _Chunk) -> None:
        tape = self._tapes.setdefault(cgroup_id, _Tape())
        tape.chunks.append(chunk)
        tape.events += len(chunk.rows)
        tape.bytes += chunk.rows.nbytes
        self.bytes += chunk.rows.nbytes

    def _trim(self, now_ns: int) -> None:
        for cgroup_id, tape in list(self._tapes.items()):
            if tape.gone_at_ns is not None and now_ns - tape.gone_at_ns > self.grace_ns:
                self._forget(cgroup_id)
                continue
            while tape.chunks and (tape.events - len(tape.chunks[0].rows) >= self.max_events
                                   or tape.bytes > self.container_bytes
                                   or int(tape.chunks[0].rows["hdr"]["ktime_ns"][-1]) < now_ns - self.max_age_ns):
                self._drop_oldest(tape)
            if tape.chunks:  # within the oldest chunk: the events past either bound
                oldest = tape.chunks[0].rows
                times = oldest["hdr"]["ktime_ns"]
                cut = max(tape.events - self.max_events, int(np.searchsorted(times, now_ns - self.max_age_ns)), 0)
                if cut:
                    self._cut(tape, cut)
            else:
                self._forget(cgroup_id)
        while self.bytes > self.total_bytes:  # the oldest chunk of all goes first
            cgroup_id = min(self._tapes, key=lambda c: self._tapes[c].chunks[0].first_ns)
            tape = self._tapes[cgroup_id]
            self.dropped += len(tape.chunks[0].rows)
            self._drop_oldest(tape)
            if not tape.chunks:
                self._forget(cgroup_id)

    def _drop_oldest(self, tape: _Tape) -> None:
        chunk = tape.chunks.popleft()
        tape.events -= len(chunk.rows)
        tape.bytes -= chunk.rows.nbytes
        self.bytes -= chunk.rows.nbytes

    def _cut(self, tape: _Tape, count: int) -> None:
        """The oldest chunk's first `count` events let go (a copy: the rest no longer
        holds the whole chunk's memory)."""
        chunk = tape.chunks[0]
        kept = _copy(chunk.rows, slice(count, None))
        tape.events -= count
        tape.bytes -= chunk.rows.nbytes - kept.nbytes
        self.bytes -= chunk.rows.nbytes - kept.nbytes
        chunk.rows = kept

    def _forget(self, cgroup_id: int) -> None:
        tape = self._tapes.pop(cgroup_id)
        self.bytes -= tape.bytes


def _copy(rows: np.ndarray, taken: slice | np.ndarray) -> np.ndarray:
    """rows[taken] copied byte for byte: numpy copies a structured dtype field by field,
    several times slower."""
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), rows.dtype.itemsize)
    return np.array(raw[taken], copy=True).view(rows.dtype).reshape(-1)

"""One pass per batch: the kernel's events go through named stages, in order, and
every stage reads and adds to one Batch. The stages (each subpackage's `stage.py`):

    drain ─► decode ─► identity ─► policy ─► recorder ─► events ─► accounting ─► detect ─► respond ─► capture ─► outputs
    kernel   kernel    identity    policy    forensics   output    output        detect    respond    forensics   output

A new capability (baselines) is a stage over the same Batch:
it reads the decoded arrays, never decodes again, and costs nothing per event in
Python. `Sensor` builds the pipeline; docs/architecture.md draws it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from sensor.identity.fds import FdNotes
    from sensor.kernel.ringbuf import RawBatch
    from sensor.records import Record


@dataclass
class Batch:
    raw: RawBatch | None = None                  # drain: the main ring's records
    spilled: RawBatch | None = None              # drain: the spill ring's (lifecycle events it had no room for)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)  # decode: per event kind, read by all after
    unknown: int = 0                             # decode: records of kinds this side cannot decode
    live: list[np.ndarray] = field(default_factory=list)  # identity: syscalls of containers already named
    held: list[np.ndarray] = field(default_factory=list)  # identity: syscalls of containers being resolved
    fd_notes: FdNotes | None = None              # identity: what the fd each event names was then
    records: list[Record] = field(default_factory=list)   # what goes out, in order
    emitted: list[Record] = field(default_factory=list)   # event records of `live` rows (rules read their rows)
    killed: set[int] = field(default_factory=set)         # respond: cgroups of containers killed (none to capture)


class Stage(Protocol):
    name: str

    def run(self, batch: Batch) -> None: ...


class Pipeline:
    def __init__(self, stages: list[Stage]):
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        self.stages = stages
        self.busy_ns: Counter = Counter()  # per stage: where the sensor's time goes

    def run(self, batch: Batch | None = None) -> Batch:
        batch = batch or Batch()
        for stage in self.stages:
            start = time.perf_counter_ns()
            stage.run(batch)
            self.busy_ns[stage.name] += time.perf_counter_ns() - start
        return batch

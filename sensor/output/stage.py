"""The output side's stages: event records, what the kernel's maps say (losses, flows,
syscall counts, containers gone), and the sinks."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from sensor.identity.cgroups import CgroupTable
from sensor.identity.stage import Identify
from sensor.output.events import EventRecords, Selection
from sensor.output.reports import KernelReports
from sensor.output.sinks import Guarded, Sink

if TYPE_CHECKING:
    from sensor.pipeline import Batch
    from sensor.records import Record


class MakeEvents:
    """Records of the events that are emitted, and of those the rules read as records:
    other kinds than syscalls, and held containers' syscalls (the rules read the
    others straight from their rows)."""

    name = "events"

    def __init__(self, events: EventRecords, cgroups: CgroupTable, selection: Selection):
        self.events = events
        self.cgroups = cgroups
        self.selection = selection

    def run(self, batch: Batch) -> None:
        selection = self.selection
        made = self.events.records(dict(batch.arrays, syscall=batch.held), selection.decode_types, batch.fd_notes) \
            if selection.decode_types is None or selection.decode_types else []
        made = [record for record in made if not self.cgroups.hold(record)]
        batch.emitted = self.events.records({"syscall": batch.live}, selection.emit_types, batch.fd_notes) \
            if selection.emit else []
        batch.records += sorted(made + batch.emitted, key=lambda record: record["ts"])


class Account:
    """Losses every batch (aggregated per reason), flows and syscall counts every
    `interval` seconds, and the books of the batch's removed cgroups closed after its
    events were made, so that those still name them."""

    name = "accounting"

    def __init__(self, reports: KernelReports, identify: Identify, interval_s: float, flows: bool):
        self.reports = reports
        self.identify = identify
        self.interval_s = interval_s
        self.flows = flows
        self.delivered: Counter = Counter()  # events by kind
        self._last = time.monotonic()

    def run(self, batch: Batch) -> None:
        self.delivered.update({kind: sum(map(len, groups)) for kind, groups in batch.arrays.items()})
        batch.records += self.reports.lost(Counter(unknown_kind=batch.unknown))
        if time.monotonic() - self._last >= self.interval_s:
            batch.records += self.periodic()
        cgroups = self.identify.cgroups
        for cgroup_id, _, ts in self.identify.changes(batch.arrays, removals=True):
            cgroups.removed(cgroup_id, ts, self.reports.cgroup_losses(cgroup_id))
            self.reports.forget_cgroup(cgroup_id)
            self.identify.forget(cgroup_id)
        batch.records += cgroups.take()

    def periodic(self) -> list[Record]:
        """Syscall-count and flow records; those of a cgroup whose identity is pending
        are held with its events, and go out named."""
        interval = time.monotonic() - self._last
        self._last = time.monotonic()
        result = self.reports.syscall_counts(interval) if self.reports.counting else []
        if self.flows:
            result += self.reports.flows(interval)
        return [record for record in result if not self.identify.cgroups.hold(record)]


class Dispatch:
    """Every record to every sink. A sink that fails keeps what it could not take and
    is tried again at the next batch; the others, and the sensor, go on."""

    name = "outputs"

    def __init__(self, sinks: list[Sink]):
        self.sinks = [Guarded(sink) for sink in sinks]
        self.records = 0

    def run(self, batch: Batch) -> None:
        lost = [loss for sink in self.sinks for loss in sink.losses()]
        records = lost + batch.records
        batch.records = records
        for sink in self.sinks:
            sink.deliver(records)
        self.records += len(records)

    def states(self) -> dict[str, dict]:
        return {sink.name: sink.state() for sink in self.sinks}

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

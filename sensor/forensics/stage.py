"""The forensics stage: the flight recorder takes each batch's events, after identity
has named their cgroups, and lets a container's go a grace period after its cgroup is
removed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sensor.forensics.recorder import FlightRecorder
from sensor.identity.cgroups import CgroupTable
from sensor.identity.stage import cgroup_changes
from sensor.kernel.clock import MonotonicClock

if TYPE_CHECKING:
    from sensor.pipeline import Batch


class RecordFlight:
    name = "recorder"

    def __init__(self, recorder: FlightRecorder, cgroups: CgroupTable, clock: MonotonicClock, mkdir: int):
        self.recorder = recorder
        self.cgroups = cgroups
        self.clock = clock
        self.mkdir = mkdir  # MAYFLY_CGROUP_MKDIR
        self._known, self._hosts = -1, frozenset()

    def run(self, batch: Batch) -> None:
        if len(self.cgroups.entries) != self._known:  # the host's cgroups, anew when the table changed
            self._known = len(self.cgroups.entries)
            self._hosts = frozenset(i for i, e in self.cgroups.entries.items() if not e.identity.is_container)
        self.recorder.add(batch.arrays, self._hosts)
        for cgroup_id, _, _ in cgroup_changes(batch.arrays, self.mkdir, self.clock, removals=True):
            # The kernel's clock (CLOCK_MONOTONIC), which the recorder keeps time by.
            self.recorder.exited(cgroup_id, time.monotonic_ns())

"""The identity stage: the cgroup, process and fd tables learn a batch before anything
reads it, so that every later stage sees containers and processes named."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from sensor.identity.cgroups import CgroupTable
from sensor.identity.fds import FdTable
from sensor.identity.processes import ProcessTable
from sensor.kernel.batches import each
from sensor.kernel.clock import MonotonicClock
from sensor.kernel.control import Kernel
from sensor.kernel.split import Arrays
from sensor.records import c_string

if TYPE_CHECKING:
    from sensor.pipeline import Batch


class Identify:
    """Also keeps the hosts' cgroups silent in the kernel while `containers_only` (the
    rules look at containers alone and nothing else is emitted)."""

    name = "identity"

    def __init__(self, kernel: Kernel, cgroups: CgroupTable, processes: ProcessTable, fds: FdTable,
                 clock: MonotonicClock, mkdir: int):
        self.kernel = kernel
        self.cgroups = cgroups
        self.processes = processes
        self.fds = fds
        self.clock = clock
        self.mkdir = mkdir  # MAYFLY_CGROUP_MKDIR
        self.containers_only = False
        self.ignored_hosts: set[int] = set()
        self.marked_hosts: set[int] = set()

    def run(self, batch: Batch) -> None:
        for cgroup_id, path, ts in self.changes(batch.arrays, removals=False):
            self.cgroups.made(cgroup_id, path, ts)
        # Identities before anything else: a short-lived container's runtime state may
        # be gone a few milliseconds after its exec woke us up.
        batch.records += self.cgroups.tick()
        self.cgroups.account(batch.arrays)
        self.processes.apply(batch.arrays)
        batch.fd_notes = self.fds.apply(batch.arrays)
        batch.live, batch.held = self._split_held(batch.arrays.get("syscall", []))
        self.take_hosts()

    def changes(self, arrays: Arrays, removals: bool) -> Iterator[tuple[int, str, int]]:
        return cgroup_changes(arrays, self.mkdir, self.clock, removals)

    def _split_held(self, groups: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Syscall arrays split into the events of cgroups whose records go out now and
        those of cgroups whose records are held for their identity."""
        pending = self.cgroups.pending_ids()
        if not pending:
            return groups, []
        held = [np.isin(events["hdr"]["cgroup_id"], pending) for events in groups]
        return [g[~h] for g, h in zip(groups, held)], [g[h] for g, h in zip(groups, held)]

    def set_containers_only(self, containers_only: bool) -> None:
        self.containers_only = containers_only
        if containers_only:
            self._ignore([i for i, e in self.cgroups.entries.items() if not e.identity.is_container])
        else:
            for cgroup_id in self.ignored_hosts:
                self.kernel.set_policy(cgroup_id, track=True)
            self.ignored_hosts = set()

    def take_hosts(self) -> None:
        hosts = self.cgroups.take_hosts()
        for cgroup_id in hosts:
            self.kernel.mark_host(cgroup_id, True)  # where the kernel never stops a process
        self.marked_hosts.update(hosts)
        if self.containers_only:
            self._ignore(hosts)

    def _ignore(self, cgroup_ids) -> None:
        for cgroup_id in cgroup_ids:
            if cgroup_id not in self.ignored_hosts:
                self.kernel.set_policy(cgroup_id, track=False)
                self.ignored_hosts.add(cgroup_id)

    def forget(self, cgroup_id: int) -> None:
        """A removed cgroup: its policy entries go with it."""
        if cgroup_id in self.marked_hosts:
            self.marked_hosts.discard(cgroup_id)
            self.kernel.mark_host(cgroup_id, False)
        if cgroup_id in self.ignored_hosts:
            self.ignored_hosts.discard(cgroup_id)
            self.kernel.drop_policy(cgroup_id)


def cgroup_changes(arrays: Arrays, mkdir: int, clock: MonotonicClock,
                   removals: bool) -> Iterator[tuple[int, str, int]]:
    """(cgroup id, path, wall-clock ns) of a batch's cgroups made (op `mkdir`), or removed."""
    for event in each(arrays, "cgroup"):
        if (event["op"] != mkdir) == removals:
            yield int(event["id"]), c_string(event["path"]), clock.to_epoch(event["hdr"]["ktime_ns"])

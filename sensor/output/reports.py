"""Records made from the kernel's maps rather than its events: what was lost, network
flows per cgroup, and syscall counts per cgroup."""

from __future__ import annotations

import math
import socket
import time
from collections import Counter

import numpy as np

from sensor import records
from sensor.identity.cgroups import CgroupTable
from sensor.kernel import layout
from sensor.kernel.clock import MonotonicClock
from sensor.kernel.control import Kernel
from sensor.kernel.syscalls import SyscallTable
from sensor.output.events import family_name, ip_text
from sensor.records import Record

PROTOCOLS = {socket.IPPROTO_ICMP: "icmp", socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp",
             socket.IPPROTO_ICMPV6: "icmpv6"}
# Why events were lost, by `stats` index, as lost records name it.
LOSS_REASONS = {"MAYFLY_STAT_RING_FULL": "ring_full", "MAYFLY_STAT_PENDING_FULL": "pending_full",
                "MAYFLY_STAT_RATE_LIMITED": "rate_limited", "MAYFLY_STAT_COMPAT": "compat_syscall"}
# Reasons the kernel also counts per cgroup (mayfly_cgroup_state), by field.
PER_CGROUP = {"rate_limited": "rate_limited", "ring_full": "ring_lost"}
# By default at most one `lost` record per reason a second: a flood is a few records a
# minute, not a hundred a second. Nothing is counted less for it.
LOST_EVERY_S = 1.0


class _Losses:
    """What was lost for one reason since its last record."""

    def __init__(self):
        self.count = 0
        self.types: Counter = Counter()
        self.cgroups: Counter = Counter()


class KernelReports:
    def __init__(self, kernel: Kernel, table: SyscallTable, cgroups: CgroupTable, clock: MonotonicClock,
                 counting: bool = True, lost_every_s: float = LOST_EVERY_S, monotonic=time.monotonic):
        self.kernel = kernel
        self.counting = counting  # whether the programs count syscalls (ProgramConfig.count_syscalls)
        self.table = table
        self.cgroups = cgroups
        self.clock = clock
        self.lost_every_s = lost_every_s
        self.monotonic = monotonic
        events = layout.events()
        self.constants = events.constants
        self.kinds = events.kinds()
        self.lost_totals: Counter = Counter()
        self._losses: dict[str, _Losses] = {}
        self._lost_at: dict[str, float] = {}       # when each reason's last record went out
        self._read_at = -math.inf                  # when the kernel's loss counters were last read
        self._stats_seen = np.zeros(self.constants["MAYFLY_STAT_COUNT"], np.uint64)
        self._ring_lost_seen = np.zeros(self.constants["MAYFLY_RING_LOST_SLOTS"], np.uint64)
        self._cgroup_seen: dict[int, dict[str, int]] = {}
        self._counts_seen: np.ndarray | None = None  # the counter rows as last read
        self._gone: set[int] = set()                 # cgroups whose counter slots to free after the next report

    def lost(self, extra: Counter | None = None, final: bool = False) -> list[Record]:
        """`lost` records for what the kernel (and `extra`, user space's own) lost: at
        most one per reason every `lost_every_s` (all that is left with `final`), each
        with everything since that reason's last one, by event type and by container
        where known."""
        now = self.monotonic()
        counts = Counter(extra or {})
        # The kernel's counters are read when a record may be due, not at every batch.
        if final or now - self._read_at >= self.lost_every_s:
            self._read_at = now
            stats = self.kernel.per_cpu_sums("stats")
            delta, self._stats_seen = stats - self._stats_seen, stats
            counts.update({reason: int(delta[self.constants[index]]) for index, reason in LOSS_REASONS.items()})
        for reason, count in (+counts).items():
            self._losses.setdefault(reason, _Losses()).count += count
            self.lost_totals[reason] += count
        due = sorted(reason for reason in self._losses
                     if final or now - self._lost_at.get(reason, -math.inf) >= self.lost_every_s)
        if not due:
            return []
        if "ring_full" in due:
            self._losses["ring_full"].types.update(self._ring_lost_types())
        if PER_CGROUP.keys() & set(due):
            self._read_cgroup_losses()
        ts = self.clock.now()
        result = []
        for reason in due:
            losses = self._losses.pop(reason)
            self._lost_at[reason] = now
            fields = {"reason": reason, "count": losses.count}
            if losses.types:
                fields["types"] = dict(losses.types)
            if losses.cgroups:
                fields["cgroups"] = [{"container": self.cgroups.container(cgroup_id), "count": count}
                                     for cgroup_id, count in losses.cgroups.items()]
            result.append(records.new("lost", ts, **fields))
        return result

    def _ring_lost_types(self) -> Counter:
        slots = self.kernel.per_cpu_sums("ring_lost")
        delta, self._ring_lost_seen = slots - self._ring_lost_seen, slots
        first_syscall = self.constants["MAYFLY_KINDS_MAX"]
        types = Counter()
        for slot in np.flatnonzero(delta):
            name = self.kinds.get(int(slot), f"kind_{slot}") if slot < first_syscall else \
                self.table.name(int(slot) - first_syscall)
            types[name] = int(delta[slot])
        return types

    def _read_cgroup_losses(self) -> None:
        keys, states = self.kernel.cgroup_states()
        for cgroup_id, state in zip(keys.tolist(), states):
            self._count_cgroup(cgroup_id, {field: int(state[field]) for field in PER_CGROUP.values()})

    def _count_cgroup(self, cgroup_id: int, state: dict[str, int]) -> None:
        """A cgroup's loss counters as read now: what grew since the last reading."""
        seen = self._cgroup_seen.setdefault(cgroup_id, {})
        for reason, field in PER_CGROUP.items():
            grew = state[field] - seen.get(field, 0)
            seen[field] = state[field]
            if grew > 0:
                self._losses.setdefault(reason, _Losses()).cgroups[cgroup_id] += grew

    def flows(self, interval_s: float) -> list[Record]:
        keys, values = self.kernel.take_flows()
        now = self.clock.now()
        result = []
        for key, value in zip(keys, values):
            family = int(key["family"])
            result.append(records.new("flow", now, container=self.cgroups.container(int(key["cgroup_id"])),
                                      interval_s=interval_s, flow={
                                          "family": family_name(family),
                                          "protocol": PROTOCOLS.get(int(key["protocol"]), int(key["protocol"])),
                                          "remote": ip_text(family, key["remote"]),
                                          "remote_port": int(key["remote_port"]),
                                          "local_port": int(key["local_port"]),
                                          **{f: int(value[f]) for f in value.dtype.names}}))
        return result

    def syscall_counts(self, interval_s: float) -> list[Record]:
        """Each counted cgroup's syscalls since the last call (rows of per-CPU u32
        counters, read whole and compared with the last reading), then the slots of
        cgroups that are gone go back to the kernel's free queue."""
        slots = self.kernel.count_slots()
        current = self.kernel.count_rows()  # slot x CPU x syscall number
        if self._counts_seen is None:
            self._counts_seen = np.zeros_like(current)
        overflow = self.constants["MAYFLY_COUNT_OVERFLOW_SLOT"]
        owners = [(None, overflow), *slots.items()]
        # Only the rows in use: the whole table is megabytes, and so is every temporary of it.
        used = np.array([slot for _, slot in owners], np.int64)
        per_slot = (current[used] - self._counts_seen[used]).sum(axis=1, dtype=np.uint64)  # u32 arithmetic wraps
        self._counts_seen = current
        now = self.clock.now()
        result = []
        for row, (cgroup_id, _) in enumerate(owners):
            counts = {self.table.name(nr): int(per_slot[row, nr]) for nr in np.flatnonzero(per_slot[row])}
            if counts:
                where = {"unattributed": True} if cgroup_id is None else {"container": self.cgroups.container(cgroup_id)}
                result.append(records.new("syscall_counts", now, interval_s=interval_s, counts=counts, **where))
        for cgroup_id in self._gone & slots.keys():
            self.kernel.free_count_slot(cgroup_id, slots[cgroup_id])
            self._counts_seen[slots[cgroup_id]] = 0
        self._gone.clear()
        return result

    def cgroup_losses(self, cgroup_id: int) -> dict[str, int]:
        """What the kernel suppressed (rate_limited) and could not send (ring_full) for
        one cgroup since it first had either."""
        state = self.kernel.cgroup_state(cgroup_id)
        return {reason: state[field] if state else 0 for reason, field in PER_CGROUP.items()}

    def forget_cgroup(self, cgroup_id: int) -> None:
        """After a cgroup is gone: its losses not yet in a `lost` record are kept for
        the next one, and its kernel state is dropped (its counters once reported)."""
        state = self.kernel.cgroup_state(cgroup_id)
        if state is not None:
            self._count_cgroup(cgroup_id, state)
        if self.counting:
            self._gone.add(cgroup_id)
        self._cgroup_seen.pop(cgroup_id, None)
        self.kernel.forget_cgroup(cgroup_id)

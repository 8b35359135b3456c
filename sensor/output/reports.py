"""Records made from the kernel's maps rather than its events: what was lost, network
flows per cgroup, and syscall counts per cgroup."""

from __future__ import annotations

import socket
from collections import Counter

import numpy as np

from sensor import records
from sensor.kernel import layout, maps
from sensor.identity.cgroups import CgroupTable
from sensor.output.decode import MonotonicClock, family_name, ip_text
from sensor.records import Record
from sensor.kernel.syscalls import SyscallTable

U32, U64 = np.dtype("<u4"), np.dtype("<u8")
PROTOCOLS = {socket.IPPROTO_ICMP: "icmp", socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp",
             socket.IPPROTO_ICMPV6: "icmpv6"}
# Why events were lost, by `stats` index, as lost records name it.
LOSS_REASONS = {"MAYFLY_STAT_RING_FULL": "ring_full", "MAYFLY_STAT_PENDING_FULL": "pending_full",
                "MAYFLY_STAT_RATE_LIMITED": "rate_limited", "MAYFLY_STAT_COMPAT": "compat_syscall"}


class KernelReports:
    def __init__(self, programs, table: SyscallTable, cgroups: CgroupTable, clock: MonotonicClock,
                 counting: bool = True):
        self.programs = programs
        self.counting = counting  # whether the programs count syscalls (ProgramConfig.count_syscalls)
        self.table = table
        self.cgroups = cgroups
        self.clock = clock
        events = layout.events()
        self.constants = events.constants
        self.structs = events.structs
        self.kinds = events.kinds()
        self.lost_totals: Counter = Counter()
        self._stats_seen = np.zeros(self.constants["MAYFLY_STAT_COUNT"], np.uint64)
        self._ring_lost_seen = np.zeros(self.constants["MAYFLY_RING_LOST_SLOTS"], np.uint64)
        self._cgroup_seen: dict[int, tuple[int, int]] = {}
        self._counts_seen: np.ndarray | None = None  # the counter rows as last read
        self._gone: set[int] = set()                 # cgroups whose counter slots to free after the next report

    def _read_array(self, name: str) -> np.ndarray:
        keys, values = maps.read_all(self.programs[name], U32, U64, percpu=True)
        result = np.zeros(self.programs[name].max_entries, np.uint64)
        result[keys] = values.sum(axis=1)
        return result

    def lost(self, extra: Counter | None = None) -> list[Record]:
        """`lost` records for what the kernel (and `extra`, user space's own) lost since
        the last call, with a breakdown by event type and by cgroup where known."""
        stats = self._read_array("stats")
        delta = stats - self._stats_seen
        self._stats_seen = stats
        counts = Counter({reason: int(delta[self.constants[index]]) for index, reason in LOSS_REASONS.items()})
        counts.update(extra or {})
        counts = +counts
        if not counts:
            return []
        by_cgroup = self._cgroup_losses() if {"ring_full", "rate_limited"} & counts.keys() else {}
        now = self.clock.now()
        result = []
        for reason, count in sorted(counts.items()):
            self.lost_totals[reason] += count
            fields = {"reason": reason, "count": count}
            if reason == "ring_full":
                fields["types"] = self._ring_lost_types()
            if reason in by_cgroup:
                fields["cgroups"] = by_cgroup[reason]
            result.append(records.new("lost", now, **fields))
        return result

    def _ring_lost_types(self) -> dict[str, int]:
        slots = self._read_array("ring_lost")
        delta, self._ring_lost_seen = slots - self._ring_lost_seen, slots
        first_syscall = self.constants["MAYFLY_KINDS_MAX"]
        types = {}
        for slot in np.flatnonzero(delta):
            name = self.kinds.get(int(slot), f"kind_{slot}") if slot < first_syscall else \
                self.table.name(int(slot) - first_syscall)
            types[name] = int(delta[slot])
        return types

    def _cgroup_losses(self) -> dict[str, list[dict]]:
        keys, states = maps.read_all(self.programs["cgroup_state"], U64, self.structs["mayfly_cgroup_state"])
        result: dict[str, list[dict]] = {"rate_limited": [], "ring_full": []}
        for cgroup_id, state in zip(keys.tolist(), states):
            limited, ring = int(state["rate_limited"]), int(state["ring_lost"])
            seen_limited, seen_ring = self._cgroup_seen.get(cgroup_id, (0, 0))
            self._cgroup_seen[cgroup_id] = (limited, ring)
            for reason, count in (("rate_limited", limited - seen_limited), ("ring_full", ring - seen_ring)):
                if count > 0:
                    result[reason].append({"container": self.cgroups.container(cgroup_id), "count": count})
        return {reason: entries for reason, entries in result.items() if entries}

    def flows(self, interval_s: float) -> list[Record]:
        keys, values = maps.read_all(self.programs["flows"], self.structs["mayfly_flow_key"],
                                     self.structs["mayfly_flow_value"], delete=True)
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
        slots = dict(zip(*(a.tolist() for a in maps.read_all(self.programs["count_slots"], U64, U32))))
        _, rows = maps.read_all(self.programs["syscall_counts"], U32, self.structs["mayfly_count_row"], percpu=True)
        current = rows["n"]  # slot x CPU x syscall number
        if self._counts_seen is None:
            self._counts_seen = np.zeros_like(current)
        per_slot = (current - self._counts_seen).astype(np.uint64).sum(axis=1)  # u32 arithmetic wraps
        self._counts_seen = current
        now = self.clock.now()
        result = []
        overflow = self.constants["MAYFLY_COUNT_OVERFLOW_SLOT"]
        for cgroup_id, slot in [(None, overflow), *slots.items()]:
            counts = {self.table.name(nr): int(per_slot[slot, nr]) for nr in np.flatnonzero(per_slot[slot])}
            if counts:
                where = {"unattributed": True} if cgroup_id is None else {"container": self.cgroups.container(cgroup_id)}
                result.append(records.new("syscall_counts", now, interval_s=interval_s, counts=counts, **where))
        for cgroup_id in self._gone & slots.keys():
            self._free_slot(cgroup_id, slots[cgroup_id])
        self._gone.clear()
        return result

    def _free_slot(self, cgroup_id: int, slot: int) -> None:
        """A gone cgroup's counter row, reported, goes back to the kernel (zeroed)."""
        counts, names = self.programs["syscall_counts"], self.programs["count_slots"]
        del names[names.Key(cgroup_id)]
        counts[counts.Key(slot)] = counts.Leaf()  # zero on every CPU
        self._counts_seen[slot] = 0
        free = self.programs["free_count_slots"]
        free.push(free.Leaf(slot))

    def cgroup_losses(self, cgroup_id: int) -> dict[str, int]:
        """What the kernel suppressed (rate_limited) and could not send (ring_full) for
        one cgroup since it first had either."""
        state = self.programs["cgroup_state"]
        try:
            value = state[state.Key(cgroup_id)]
        except KeyError:
            return {"rate_limited": 0, "ring_full": 0}
        return {"rate_limited": int(value.rate_limited), "ring_full": int(value.ring_lost)}

    def forget_cgroup(self, cgroup_id: int) -> None:
        """After a cgroup is gone: drop its kernel state (its counters once reported)."""
        if self.counting:
            self._gone.add(cgroup_id)
        self._cgroup_seen.pop(cgroup_id, None)
        state = self.programs["cgroup_state"]
        try:
            del state[state.Key(cgroup_id)]
        except KeyError:
            pass

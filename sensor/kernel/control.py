"""The loaded programs as the rest of the sensor sees them: the two ring buffers to
drain, and every read and write of their maps. Nothing else touches a BPF map, so
this class is the seam a test replaces (sensor.testing.kernel.FakeKernel) to run the
whole pipeline without root."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from sensor.kernel import layout, maps
from sensor.kernel.bpf_program import ProgramConfig, Programs
from sensor.kernel.ringbuf import RawBatch, RingReader
from sensor.kernel.syscalls import EXEC, SyscallTable

U32, U64 = np.dtype("<u4"), np.dtype("<u8")
ALWAYS = np.iinfo(np.uint64).max  # a `pressure` that never ends
BATCH_INTERVAL_S = 0.002  # at least this between the drains of a wake-up (poll timeouts above 0)


@dataclass(frozen=True)
class Needle:
    """An entry of the `needles` trie (events.h): a syscall and its slot 0 path."""
    syscall: str
    path: str
    exact: bool  # False: a prefix

    def key(self) -> bytes:
        """The path's bytes as the trie holds them: an exact one with its NUL."""
        return self.path.encode() + (b"\0" if self.exact else b"")


class Kernel:
    def __init__(self, config: ProgramConfig):
        self.config = config
        self.programs = Programs(config)
        try:
            ring, spill = self.programs["events"], self.programs["spill"]
            self.ring = RingReader(ring.map_fd, ring.max_entries)
            self.spill = RingReader(spill.map_fd, spill.max_entries, batch_bytes=spill.max_entries)
        except BaseException:
            self.programs.close()
            raise
        events = layout.events()
        self._structs, self._constants = events.structs, events.constants
        self._hold_ns = self._constants["MAYFLY_PRESSURE_HOLD_NS"]
        allow = self._structs["mayfly_allow_key"]  # its prefix covers port, family and pad before the address
        self._allow_header_bits = 8 * (allow.fields["addr"][1] - allow.fields["port"][1])
        self._pressure_bytes = 0   # a backlog of this much at a drain is pressure (0: always pressure)
        self._pressed_until = 0    # what the `pressure` map says, as last written here
        self._drained_at = 0.0     # monotonic
        self._needle_syscalls: set[str] = set()
        self._stop_syscalls: set[str] = set()
        self._capturing: tuple | None = None  # set_capture's last arguments

    @property
    def attached(self) -> list[str]:
        return self.programs.attached

    # ---- the rings ----

    def wait(self, timeout_s: float, hurry: bool = False) -> None:
        """Until the ring has records, or `timeout_s`. `hurry`: no pause after the last
        drain (a container held at the spawn gate waits for the next batch)."""
        self.ring.wait(timeout_s)
        # Urgent records (lifecycle events, needles) wake user space one at a time; a
        # pause lets a burst of them share a batch, since user space's cost is mostly
        # per batch (an exec storm: one batch per fork, exec and exit otherwise).
        pause = self._drained_at + BATCH_INTERVAL_S - time.monotonic()
        if timeout_s > 0 and pause > 0 and not self.ring.full and not hurry:
            time.sleep(pause)

    def drain(self) -> RawBatch:
        """The main ring's records. A backlog over the pressure threshold first tells the
        programs the ring is under pressure, for MAYFLY_PRESSURE_HOLD_NS from now."""
        if self._pressure_bytes and self.ring.pending() >= self._pressure_bytes:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            if now + self._hold_ns // 2 >= self._pressed_until:  # a write per half hold at most
                self._press(now + self._hold_ns)
        self._drained_at = time.monotonic()
        return self.ring.drain()

    def drain_spill(self) -> RawBatch | None:
        """The spill ring's records, None when it has none (it rarely has)."""
        return self.spill.drain() if self.spill.pending() else None

    def pending(self) -> bool:
        """Records the main ring holds that were not drained yet."""
        return bool(self.ring.pending())

    def spill_pending(self) -> bool:
        return bool(self.spill.pending())

    # ---- writes ----

    def configure(self, rate: int, burst: int, pressure: float) -> None:
        """The `config` entry: the token buckets (rate 0: none) and the sensor's own pid;
        and when an empty bucket holds a cgroup back: while the ring is `pressure` full
        (0: always)."""
        entry = dataclasses.replace(self.config, cgroup_rate=rate, cgroup_burst=burst).kernel_config()
        entry["self_tgid"] = os.getpid()
        maps.write_array(self.programs["config"], entry)
        self._pressure_bytes = int(self.ring.size * pressure)
        self._press(ALWAYS if not pressure else 0)

    def _press(self, until_ns: int) -> None:
        maps.write_array(self.programs["pressure"], np.array([until_ns], U64))
        self._pressed_until = until_ns

    def set_capture(self, table: SyscallTable, wanted: set[str], results: set[str]) -> set[str]:
        self._capturing = (table, wanted, results)
        return self.programs.set_capture(table, wanted, results, self._needle_syscalls, self._stop_syscalls)

    def disarm_stops(self) -> None:
        """The kernel stops no process from now on (the sensor is stopping)."""
        self._stop_syscalls = set()
        if self._capturing is not None:
            self.programs.set_capture(*self._capturing, self._needle_syscalls, set())

    def set_needles(self, table: SyscallTable, needles: Collection[Needle],
                    stopping: Mapping[Needle, str] | None = None, comms: Collection[str] = (),
                    kills: Collection[Needle | str] = ()) -> None:
        """The `needles` trie (events.h): `needles` a flood cannot hide, and `stopping`
        ones, whose process the kernel stops when its open reads, writes or either
        ("read", "write", "any"); and `comms`, the process names whose exec stops.
        Those of the stopping needles and names also in `kills` kill the process instead
        (an in-kernel kill). set_capture() then flags their syscalls."""
        stopping = stopping or {}
        c = self._constants
        names = self.programs["stop_comms"]
        names.clear()
        for comm in comms:
            names[names.Key(comm.encode())] = names.Leaf(c["MAYFLY_NEEDLE_KILL"] if comm in kills else 1)
        trie, dtype = self.programs["needles"], self._structs["mayfly_needle_key"]
        access = {"read": c["MAYFLY_NEEDLE_STOP_READ"], "write": c["MAYFLY_NEEDLE_STOP_WRITE"],
                  "any": c["MAYFLY_NEEDLE_STOP_READ"] | c["MAYFLY_NEEDLE_STOP_WRITE"]}
        trie.clear()
        for needle in set(needles) | set(stopping):
            path = needle.key()
            key = np.zeros(1, dtype)
            key["prefixlen"] = 32 + 8 * len(path)
            key["nr"] = table.numbers[needle.syscall]
            key["path"][0, :len(path)] = np.frombuffer(path, np.uint8)
            bits = (c["MAYFLY_NEEDLE_FLOOD"] if needle in needles else 0) | access.get(stopping.get(needle), 0)
            if needle in kills and needle in stopping:
                bits |= c["MAYFLY_NEEDLE_KILL"]
            trie[trie.Key.from_buffer_copy(key.tobytes())] = trie.Leaf(bits)
        self._needle_syscalls = {needle.syscall for needle in needles}
        self._stop_syscalls = {needle.syscall for needle in stopping} | (set(EXEC) if comms else set())

    def mark_host(self, cgroup_id: int, host: bool) -> None:
        """A cgroup of the host's (no process is stopped there), or no longer (removed)."""
        hosts = self.programs["host_cgroups"]
        if host:
            hosts[hosts.Key(cgroup_id)] = hosts.Leaf(1)
        else:
            hosts.pop(hosts.Key(cgroup_id), None)

    def stopped(self) -> dict[int, int]:
        """The processes the kernel stopped and user space has not let go: pid -> when
        (kernel time)."""
        return {key.value: leaf.value for key, leaf in self.programs["stopped_tasks"].items()}

    def let_go(self, pid: int) -> None:
        """A stopped process is user space's to continue or kill now."""
        self.programs["stopped_tasks"].pop(self.programs["stopped_tasks"].Key(pid), None)

    # ---- the spawn gate and isolation (events.h) ----

    def set_gate(self, on: bool) -> None:
        """Hold the first exec of every cgroup with no verdict (and not the host's)."""
        maps.write_array(self.programs["gate"], np.array([int(on)], U32))

    def set_verdict(self, cgroup_id: int, verdict: str | None) -> None:
        """A cgroup's verdict: "allow", "deny" (its execs are killed), "pending"; None
        forgets it (a removed cgroup)."""
        verdicts = self.programs["verdicts"]
        if verdict is None:
            verdicts.pop(verdicts.Key(cgroup_id), None)
        else:
            verdicts[verdicts.Key(cgroup_id)] = verdicts.Leaf(self._constants[f"MAYFLY_VERDICT_{verdict.upper()}"])

    def gated(self) -> dict[int, tuple[int, int]]:
        """The processes the gate holds: pid -> (cgroup id, since, in kernel time). The
        map is pinned: it may list what a sensor that crashed held."""
        return {key.value: (leaf.cgroup_id, leaf.since_ns) for key, leaf in self.programs["gated_tasks"].items()}

    def let_go_gated(self, pid: int) -> None:
        gated = self.programs["gated_tasks"]
        gated.pop(gated.Key(pid), None)

    def isolate(self, cgroup_id: int, on: bool) -> None:
        """Drop a cgroup's traffic but to and from the allowed destinations, or no longer."""
        isolated = self.programs["isolated"]
        if on:
            isolated[isolated.Key(cgroup_id)] = isolated.Leaf(1)
        else:
            isolated.pop(isolated.Key(cgroup_id), None)
        maps.write_array(self.programs["isolating"], np.array([len(isolated)], U64))

    def set_isolation_allowed(self, allowed: Collection[tuple[str, int]]) -> None:
        """What an isolated cgroup may still reach: (network, port or 0 for any) pairs."""
        trie, dtype = self.programs["isolate_allow"], self._structs["mayfly_allow_key"]
        trie.clear()
        for network, port in allowed:
            net = ipaddress.ip_network(network, strict=False)
            key = np.zeros(1, dtype)
            key["prefixlen"] = self._allow_header_bits + net.prefixlen
            key["port"] = port
            key["family"] = socket.AF_INET if net.version == 4 else socket.AF_INET6
            packed = net.network_address.packed
            key["addr"][0, :len(packed)] = np.frombuffer(packed, np.uint8)
            trie[trie.Key.from_buffer_copy(key.tobytes())] = trie.Leaf(1)

    def set_policy(self, cgroup_id: int, track: bool) -> None:
        policy = self.programs["cgroup_policy"]
        value = self._constants["MAYFLY_POLICY_TRACK" if track else "MAYFLY_POLICY_IGNORE"]
        policy[policy.Key(cgroup_id)] = policy.Leaf(value)

    def drop_policy(self, cgroup_id: int) -> None:
        policy = self.programs["cgroup_policy"]
        policy.pop(policy.Key(cgroup_id), None)

    def seed_parents(self, parents: dict[int, int]) -> None:
        """The kernel's parent_of map, for processes that forked before the sensor started."""
        parent_of = self.programs["parent_of"]
        for pid, ppid in parents.items():
            parent_of[parent_of.Key(pid)] = parent_of.Leaf(ppid)

    def forget_cgroup(self, cgroup_id: int) -> None:
        """A gone cgroup's token bucket and loss counters."""
        state = self.programs["cgroup_state"]
        try:
            del state[state.Key(cgroup_id)]
        except KeyError:
            pass

    def free_count_slot(self, cgroup_id: int, slot: int) -> None:
        """A gone cgroup's syscall counter row goes back to the kernel's free queue, zeroed."""
        counts, names = self.programs["syscall_counts"], self.programs["count_slots"]
        del names[names.Key(cgroup_id)]
        counts[counts.Key(slot)] = counts.Leaf()  # zero on every CPU
        free = self.programs["free_count_slots"]
        free.push(free.Leaf(slot))

    # ---- reads ----

    def per_cpu_sums(self, name: str) -> np.ndarray:
        """A per-CPU array of u64 counters (`stats`, `ring_lost`), summed over CPUs."""
        keys, values = maps.read_all(self.programs[name], U32, U64, percpu=True)
        result = np.zeros(self.programs[name].max_entries, np.uint64)
        result[keys] = values.sum(axis=1)
        return result

    def cgroup_states(self) -> tuple[np.ndarray, np.ndarray]:
        """(cgroup ids, mayfly_cgroup_state) of every cgroup with a bucket or a loss."""
        return maps.read_all(self.programs["cgroup_state"], U64, self._structs["mayfly_cgroup_state"])

    def cgroup_state(self, cgroup_id: int) -> dict[str, int] | None:
        state = self.programs["cgroup_state"]
        try:
            value = state[state.Key(cgroup_id)]
        except KeyError:
            return None
        return {name: int(getattr(value, name)) for name in self._structs["mayfly_cgroup_state"].names}

    def take_flows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every flow's counters since the last call (read and deleted)."""
        return maps.read_all(self.programs["flows"], self._structs["mayfly_flow_key"],
                             self._structs["mayfly_flow_value"], delete=True)

    def count_slots(self) -> dict[int, int]:
        """cgroup id -> its row of syscall counters."""
        return dict(zip(*(a.tolist() for a in maps.read_all(self.programs["count_slots"], U64, U32))))

    def count_rows(self) -> np.ndarray:
        """The syscall counters: slot x CPU x syscall number, u32 each."""
        _, rows = maps.read_all(self.programs["syscall_counts"], U32, self._structs["mayfly_count_row"], percpu=True)
        return rows["n"]

    def close(self) -> None:
        self.ring.close()
        self.spill.close()
        self.programs.close()

"""A kernel side with no BPF behind it, for running the whole pipeline without root:
it hands out the raw batches a test feeds it, keeps the map state that user space
reads (losses by reason, per cgroup and per type) in plain arrays, and records the
writes. It stands in for sensor.kernel.control.Kernel only: everything above the
kernel side runs for real."""

from __future__ import annotations

from collections import deque

import numpy as np

from sensor.kernel import layout
from sensor.kernel.bpf_program import ProgramConfig
from sensor.kernel.ringbuf import RawBatch
from sensor.kernel.syscalls import SyscallTable
from sensor.output.reports import PER_CGROUP

_EMPTY = RawBatch(np.zeros(0, np.uint8), np.zeros(0, np.uint64), np.zeros(0, np.uint32))


class FakeKernel:
    def __init__(self, config: ProgramConfig):
        self.config = config
        events = layout.events()
        self.constants, self.structs = events.constants, events.structs
        self.batches: deque[RawBatch] = deque()
        self.spilled: deque[RawBatch] = deque()
        self.stats = np.zeros(self.constants["MAYFLY_STAT_COUNT"], np.uint64)
        self.ring_lost = np.zeros(self.constants["MAYFLY_RING_LOST_SLOTS"], np.uint64)
        self.cgroup_losses: dict[int, dict[str, int]] = {}
        self.policies: dict[int, bool] = {}
        self.captured: set[str] = set()
        self.needles: set = set()
        self.stopping: dict = {}
        self.hosts: set[int] = set()
        self.stopped_tasks: dict[int, int] = {}  # a test's "the kernel stopped it" (pid -> ktime)
        self.rate: tuple[int, int, float] | None = None
        self.gate = False
        self.verdict_of: dict[int, str] = {}
        self.gated_tasks: dict[int, tuple[int, int]] = {}  # a test's "the gate holds it" (pid -> (cgroup, ktime))
        self.isolated: set[int] = set()
        self.allowed: list[tuple[str, int]] = []
        self.closed = False

    attached = ["fake"]

    # ---- what a test does ----

    def feed(self, batch: RawBatch, spill: bool = False) -> None:
        (self.spilled if spill else self.batches).append(batch)

    def lose(self, reason: str, count: int, cgroup_id: int | None = None, nr: int | None = None) -> None:
        """Count losses as the programs do: `reason` is a MAYFLY_STAT_* suffix
        (RING_FULL, RATE_LIMITED, ...); per cgroup and per syscall number where given."""
        self.stats[self.constants[f"MAYFLY_STAT_{reason}"]] += count
        if nr is not None:
            self.ring_lost[self.constants["MAYFLY_KINDS_MAX"] + nr] += count
        if cgroup_id is not None:
            state = self.cgroup_losses.setdefault(cgroup_id, dict.fromkeys(self.structs["mayfly_cgroup_state"].names, 0))
            state[PER_CGROUP[reason.lower()]] += count

    # ---- Kernel's interface ----

    def wait(self, timeout_s: float, hurry: bool = False) -> None:
        pass

    def drain(self) -> RawBatch:
        return self.batches.popleft() if self.batches else _EMPTY

    def drain_spill(self) -> RawBatch | None:
        return self.spilled.popleft() if self.spilled else None

    def pending(self) -> bool:
        return bool(self.batches)

    def spill_pending(self) -> bool:
        return bool(self.spilled)

    def configure(self, rate: int, burst: int, pressure: float) -> None:
        self.rate = rate, burst, pressure

    def set_capture(self, table: SyscallTable, wanted: set[str], results: set[str]) -> set[str]:
        self.captured = set(wanted)
        return set(results) & set(wanted)

    def set_needles(self, table: SyscallTable, needles, stopping=None, comms=(), kills=()) -> None:
        self.needles = set(needles)
        self.stopping = dict(stopping or {})
        self.stop_comms = set(comms)
        self.kills = set(kills)

    def disarm_stops(self) -> None:
        self.stopping = {}

    def mark_host(self, cgroup_id: int, host: bool) -> None:
        if host:
            self.hosts.add(cgroup_id)
        else:
            self.hosts.discard(cgroup_id)

    def stopped(self) -> dict[int, int]:
        return dict(self.stopped_tasks)

    def let_go(self, pid: int) -> None:
        self.stopped_tasks.pop(pid, None)

    def set_gate(self, on: bool) -> None:
        self.gate = on

    def set_verdict(self, cgroup_id: int, verdict: str | None) -> None:
        if verdict is None:
            self.verdict_of.pop(cgroup_id, None)
        else:
            self.verdict_of[cgroup_id] = verdict

    def gated(self) -> dict[int, tuple[int, int]]:
        return dict(self.gated_tasks)

    def let_go_gated(self, pid: int) -> None:
        self.gated_tasks.pop(pid, None)

    def isolate(self, cgroup_id: int, on: bool) -> None:
        (self.isolated.add if on else self.isolated.discard)(cgroup_id)

    def set_isolation_allowed(self, allowed) -> None:
        self.allowed = list(allowed)

    def set_policy(self, cgroup_id: int, track: bool) -> None:
        self.policies[cgroup_id] = track

    def drop_policy(self, cgroup_id: int) -> None:
        self.policies.pop(cgroup_id, None)

    def seed_parents(self, parents: dict[int, int]) -> None:
        pass

    def forget_cgroup(self, cgroup_id: int) -> None:
        self.cgroup_losses.pop(cgroup_id, None)

    def free_count_slot(self, cgroup_id: int, slot: int) -> None:
        pass

    def per_cpu_sums(self, name: str) -> np.ndarray:
        return {"stats": self.stats, "ring_lost": self.ring_lost}[name].copy()

    def cgroup_states(self) -> tuple[np.ndarray, np.ndarray]:
        dtype = self.structs["mayfly_cgroup_state"]
        states = np.array([tuple(state[name] for name in dtype.names) for state in self.cgroup_losses.values()], dtype)
        return np.array(list(self.cgroup_losses), np.uint64), states

    def cgroup_state(self, cgroup_id: int) -> dict[str, int] | None:
        state = self.cgroup_losses.get(cgroup_id)
        return None if state is None else dict(state)

    def take_flows(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(0, self.structs["mayfly_flow_key"]), np.zeros(0, self.structs["mayfly_flow_value"])

    def count_slots(self) -> dict[int, int]:
        return {}

    def count_rows(self) -> np.ndarray:
        return np.zeros((1, 1, self.constants["MAYFLY_MAX_SYSCALLS"]), np.uint32)

    def close(self) -> None:
        self.closed = True

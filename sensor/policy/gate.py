"""The processes the spawn gate holds (events.h): each new container's first exec,
stopped before the entrypoint's first instruction until its verdict. Released with
SIGCONT, or the container killed with cgroup.kill; past the policy's deadline, or when
the sensor stops, whichever the policy's failure mode says. The kernel's list is pinned,
so that holds a crashed sensor left are found and ended too."""

from __future__ import annotations

import time

from sensor.kernel.control import Kernel
from sensor.log import get_logger
from sensor.system.freezer import Freezer, FreezerError, kill_pid, resume

log = get_logger("gate")

SWEEP_S = 0.5  # how often the kernel's list is looked at for holds with no event


class Holds:
    def __init__(self, kernel: Kernel, gated_flag: int):
        self.kernel = kernel
        self.gated_flag = gated_flag  # MAYFLY_SYSCALL_GATED
        self.held: dict[int, dict[int, int]] = {}  # cgroup id -> pid -> when held (kernel ns)
        self._swept = 0.0

    def note(self, syscall_arrays) -> None:
        """The batch's execs the gate held."""
        for events in syscall_arrays:
            flagged = events[(events["flags"] & self.gated_flag) != 0]
            for pid, cgroup_id, ktime in zip(flagged["hdr"]["pid"].tolist(), flagged["hdr"]["cgroup_id"].tolist(),
                                             flagged["hdr"]["ktime_ns"].tolist()):
                self.held.setdefault(cgroup_id, {})[pid] = ktime

    def since(self, cgroup_id: int) -> int | None:
        """When the cgroup's first held process was held (kernel ns)."""
        pids = self.held.get(cgroup_id)
        return min(pids.values()) if pids else None

    def release(self, cgroup_id: int) -> int:
        """SIGCONT its held processes; how many."""
        pids = self.held.pop(cgroup_id, {})
        for pid in pids:
            self.kernel.let_go_gated(pid)
            resume(pid)
        return len(pids)

    def kill(self, cgroup_id: int, cgroup_dir: str) -> str:
        """Every process of the cgroup killed (held ones included); what was done."""
        pids = self.held.pop(cgroup_id, {})
        try:
            Freezer(cgroup_dir, next(iter(pids), None)).kill()
            outcome = "killed"
        except (FreezerError, OSError) as e:
            outcome = f"kill failed: {e}"
        for pid in pids:
            self.kernel.let_go_gated(pid)
        return outcome

    def overdue(self, deadline_s: float) -> list[int]:
        """Cgroups held longer than the deadline."""
        now = time.monotonic_ns()
        return [cgroup_id for cgroup_id, pids in self.held.items() if now - min(pids.values()) > deadline_s * 1e9]

    def sweep(self, deadline_s: float, fail_open: bool) -> list[tuple[int, int]]:
        """Holds in the kernel's list with no event here, older than the deadline (a lost
        event, or a sensor that crashed): ended as the failure mode says. (pid, cgroup)
        of each."""
        now = time.monotonic()
        if now - self._swept < SWEEP_S:
            return []
        self._swept = now
        ended = []
        kernel_now = time.monotonic_ns()
        for pid, (cgroup_id, since_ns) in self.kernel.gated().items():
            if pid in self.held.get(cgroup_id, {}) or kernel_now - since_ns <= deadline_s * 1e9:
                continue
            if fail_open:
                resume(pid)
            else:
                kill_pid(pid)
            self.kernel.let_go_gated(pid)
            ended.append((pid, cgroup_id))
        return ended

    def end_all(self, fail_open: bool, cgroup_dir) -> None:
        """The sensor stops: every hold ends as the failure mode says (`cgroup_dir`: a
        cgroup id's directory)."""
        for cgroup_id in list(self.held):
            if fail_open:
                self.release(cgroup_id)
            else:
                self.kill(cgroup_id, cgroup_dir(cgroup_id))
        for pid in self.kernel.gated():
            (resume if fail_open else kill_pid)(pid)
            self.kernel.let_go_gated(pid)

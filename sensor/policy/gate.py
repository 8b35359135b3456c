"""The processes the spawn gate holds (events.h): each new container's first exec,
stopped before the entrypoint's first instruction until its verdict. Released with
SIGCONT, or the container killed with cgroup.kill; past the policy's deadline, or when
the sensor stops, whichever the policy's failure mode says. The kernel's list is pinned,
so that holds a crashed sensor left are found and ended too."""

from __future__ import annotations

import time

from sensor.kernel.control import Kernel
from sensor.log import get_logger
from sensor.system import host
from sensor.system.freezer import Freezer, FreezerError, kill_pid, resume

log = get_logger("gate")

SWEEP_S = 0.5  # how often the kernel's list is looked at for holds with no event
RUNTIME_REEXEC = b"/proc/self/exe"  # how runtimes start their own init (runc, crun)


class Holds:
    def __init__(self, kernel: Kernel, gated_flag: int):
        self.kernel = kernel
        self.gated_flag = gated_flag  # MAYFLY_SYSCALL_GATED
        self.held: dict[int, dict[int, int]] = {}  # cgroup id -> pid -> when held (kernel ns)
        self._swept = 0.0

    def note(self, syscall_arrays) -> None:
        """The batch's execs the gate held. A runtime re-executing itself in the new
        cgroup (runc's `runc init`, exec'd as /proc/self/exe while its parent moves it
        in) is let go at once: the cgroup's verdict stays pending, so the entrypoint's
        exec, which comes after it, is held."""
        for events in syscall_arrays:
            for event in events[(events["flags"] & self.gated_flag) != 0]:
                pid, cgroup_id = int(event["hdr"]["pid"]), int(event["hdr"]["cgroup_id"])
                if bytes(event["data"][:event["slot_len"][0]]).rstrip(b"\0") == RUNTIME_REEXEC:
                    self.kernel.let_go_gated(pid)
                    resume(pid)
                else:
                    self.held.setdefault(cgroup_id, {})[pid] = int(event["hdr"]["ktime_ns"])

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

    def kill(self, cgroup_id: int, cgroup_dir: str | None) -> str:
        """Every process of the cgroup killed (held ones included); what was done.
        `cgroup_dir` None (a cgroup not known here): the held processes alone."""
        pids = self.held.pop(cgroup_id, {})
        outcome = "killed"
        try:
            if cgroup_dir is not None:
                Freezer(cgroup_dir, next(iter(pids), None)).kill()
            else:
                for pid in pids:
                    if still_held(pid, cgroup_id):
                        kill_pid(pid)
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
            if still_held(pid, cgroup_id):
                (resume if fail_open else kill_pid)(pid)
                ended.append((pid, cgroup_id))
            self.kernel.let_go_gated(pid)  # ended, or gone (its pid may be another process's now)
        return ended

    def end_all(self, fail_open: bool, cgroup_dir) -> None:
        """The sensor stops: every hold ends as the failure mode says (`cgroup_dir`: a
        cgroup id's directory)."""
        for cgroup_id in list(self.held):
            if fail_open:
                self.release(cgroup_id)
            else:
                self.kill(cgroup_id, cgroup_dir(cgroup_id))
        for pid, (cgroup_id, _) in self.kernel.gated().items():
            if still_held(pid, cgroup_id):
                (resume if fail_open else kill_pid)(pid)
            self.kernel.let_go_gated(pid)


def still_held(pid: int, cgroup_id: int) -> bool:
    """Whether `pid` is still the process the gate held: stopped, in that cgroup. An
    entry of the pinned map may outlive its process (a sensor that crashed, a process
    killed by someone else), and its pid be another's by now: that one is never signalled."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stopped = f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
        return stopped and host.cgroup_id(host.cgroup2_dir_of(pid)) == cgroup_id
    except (OSError, IndexError, host.HostError):
        return False

"""pid -> exe and cmdline, so that every record names its process's program.

Seeded from /proc at start, kept from exec and exit events (whatever is emitted), and
bounded: the oldest entries go first when it is full. Lineage and fd tables build on
this with container identity.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from sensor.records import cmdline, untrusted_text
from sensor.syscalls import EXEC, SyscallTable


def _read_proc(pid: str) -> dict | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None  # a kernel thread, or gone already
    return {"exe": exe, "cmdline": cmdline([untrusted_text(a) for a in argv if a])}


class ProcessTable:
    def __init__(self, table: SyscallTable, capacity: int = 65536):
        self.capacity = capacity
        self.entries: OrderedDict[int, dict] = OrderedDict()
        self._exec_nrs = [table.numbers[name] for name in EXEC if name in table.numbers]
        self._table = table

    def scan(self) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                info = _read_proc(entry.name)
                if info:
                    self._put(int(entry.name), info)

    def _put(self, pid: int, info: dict) -> None:
        self.entries[pid] = info
        self.entries.move_to_end(pid)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def apply(self, arrays: dict[str, list[np.ndarray]]) -> None:
        """Learn from a batch's successful execs (exits are applied after its records)."""
        for syscalls in arrays.get("syscall", ()):
            self._learn(syscalls[np.isin(syscalls["nr"], self._exec_nrs) & (syscalls["result"] == 0)])

    def _learn(self, execs: np.ndarray) -> None:
        for event in execs:
            evt = self._table.decode_args(event)
            argv = evt.get("argv", [])
            self._put(int(event["hdr"]["pid"]), {
                "exe": evt["filename"], "cmdline": cmdline(argv)})

    def forget_exited(self, arrays: dict[str, list[np.ndarray]]) -> None:
        for exits in arrays.get("exit", ()):
            for pid in exits["hdr"]["pid"].tolist():
                self.entries.pop(pid, None)

    def get(self, pid: int) -> dict:
        return self.entries.get(pid, {})

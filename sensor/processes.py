"""pid -> name, exe, cmdline and parent, so that every record names its process and its
lineage (Falco's proc.pname, proc.pexe, proc.pcmdline, proc.aname[N]).

Seeded from /proc at start and kept from fork (a child starts as a copy of its parent,
as the kernel makes it), exec and exit events. An exited process stays known while
its descendants may still name it as an ancestor; the table is bounded, and the
entries used least recently go first when it is full.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from sensor.batches import in_time_order
from sensor.records import c_string, cmdline, untrusted_text
from sensor.syscalls import EXEC, SyscallTable


@dataclass(frozen=True)
class Process:
    name: str | bytes   # comm: what the kernel calls it (an exec's basename, at most 15 bytes)
    exe: str | bytes
    cmdline: str | bytes
    ppid: int


def read_proc(pid: int) -> Process | None:
    """A process as /proc shows it now; None for a kernel thread or one gone already."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    try:
        # comm may hold spaces and parentheses: the fields resume after the last ')'.
        name = stat[stat.index(b"(") + 1:stat.rindex(b")")]
        ppid = int(stat[stat.rindex(b")") + 1:].split()[1])
    except (ValueError, IndexError):
        return None
    return Process(untrusted_text(name), exe, cmdline([untrusted_text(a) for a in argv if a]), ppid)


class ProcessTable:
    def __init__(self, table: SyscallTable, capacity: int = 65536, ancestors: int = 5):
        self.capacity = capacity
        self.ancestors = ancestors  # how many generations records name (proc.anames)
        self.entries: OrderedDict[int, Process] = OrderedDict()
        self._exec_nrs = [table.numbers[name] for name in EXEC if name in table.numbers]
        self._table = table

    def scan(self) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                process = read_proc(int(entry.name))
                if process:
                    self._put(int(entry.name), process)

    def _put(self, pid: int, process: Process) -> None:
        self.entries[pid] = process
        self.entries.move_to_end(pid)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def apply(self, arrays: dict[str, list[np.ndarray]]) -> None:
        """Learn a batch's forks and successful execs, in the order they happened."""
        wanted = []
        for forks in arrays.get("fork", ()):
            wanted.append(forks)
        for syscalls in arrays.get("syscall", ()):
            wanted.append(syscalls[np.isin(syscalls["nr"], self._exec_nrs) & (syscalls["result"] == 0)])
        for event in in_time_order(wanted):
            header = event["hdr"]
            pid = int(header["pid"])
            if "child_pid" in event.dtype.names:
                parent = self.entries.get(pid) or Process(c_string(header["comm"]), "", "", int(header["ppid"]))
                self._put(int(event["child_pid"]), replace(parent, ppid=pid))
            else:
                evt = self._table.decode_args(event)
                known = self.entries.get(pid)
                self._put(pid, Process(c_string(header["comm"]), evt["filename"], cmdline(evt.get("argv", [])),
                                       known.ppid if known else int(header["ppid"])))

    def get(self, pid: int) -> dict:
        """The proc fields records carry: exe, cmdline, and the lineage (pname, pexe,
        pcmdline, anames: the names of the parent, grandparent, ...)."""
        process = self.entries.get(pid)
        if process is None:
            return {}
        fields = {"exe": process.exe, "cmdline": process.cmdline}
        parent = self.entries.get(process.ppid)
        if parent is not None:
            fields.update(pname=parent.name, pexe=parent.exe, pcmdline=parent.cmdline)
        names, seen, ancestor_pid = [], {pid}, process.ppid
        while len(names) < self.ancestors and ancestor_pid not in seen:  # pid reuse can make loops
            ancestor = self.entries.get(ancestor_pid)
            if ancestor is None:
                break
            names.append(ancestor.name)
            seen.add(ancestor_pid)
            ancestor_pid = ancestor.ppid
        if names:
            fields["anames"] = names
        return fields

    def parents(self) -> dict[int, int]:
        """pid -> ppid of every known process (the kernel's parent_of map is seeded from it)."""
        return {pid: process.ppid for pid, process in self.entries.items()}

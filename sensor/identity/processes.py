"""pid -> name, exe, cmdline and parent, so that every record names its process and its
lineage (Falco's proc.pname, proc.pexe, proc.pcmdline, proc.aname[N]), and what Falco's
rules ask of a process beyond that: when it started, its terminal, working directory
and effective capabilities, and whether its executable came from a memfd or from a
container's writable (upper) layer.

Seeded from /proc at start and kept from fork (a child starts as a copy of its parent,
as the kernel makes it), exec and exit events. What the events do not carry is read
from /proc/<pid> when the exec is applied, a few milliseconds after it: for a process
gone by then, it is not known. An exited process stays known while an entry of the
table names it as its parent (so that its descendants' lineage holds), and goes with
the last of them; the table is bounded, and the entries used least recently go first
when it is full.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from sensor.system import uapi
from sensor.kernel.batches import in_time_order
from sensor.records import c_string, cmdline, untrusted_text
from sensor.kernel.syscalls import EXEC, SyscallTable


@dataclass(frozen=True)
class Details:
    """What /proc/<pid> says beyond the events; None where it could not be read."""
    tty: int | None = None              # the controlling terminal's device number; 0: none
    cwd: str | None = None
    cap_effective: int | None = None    # bit i: capability i
    exe_from_memfd: bool | None = None
    exe_upper_layer: bool | None = None  # the executable is in its overlay root's upper dir


@dataclass(frozen=True)
class Process:
    name: str | bytes   # comm: what the kernel calls it (an exec's basename, at most 15 bytes)
    exe: str | bytes
    cmdline: str | bytes
    ppid: int
    start_ns: int | None = None  # wall clock ns of its fork
    details: Details = Details()


def _stat_fields(stat: bytes) -> list[bytes]:
    """/proc/<pid>/stat after the comm, which may hold spaces and parentheses."""
    return stat[stat.rindex(b")") + 1:].split()


def read_proc(pid: int) -> Process | None:
    """A process as /proc shows it now; None for a kernel thread or one gone already."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
        exe = _below(os.readlink(f"/proc/{pid}/root"), os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None
    try:
        name = stat[stat.index(b"(") + 1:stat.rindex(b")")]
        fields = _stat_fields(stat)
        ppid = int(fields[1])
        # starttime: clock ticks after boot; the monotonic clock counts from boot too
        start = int(fields[19]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (ValueError, IndexError):
        return None
    return Process(untrusted_text(name), exe, cmdline([untrusted_text(a) for a in argv if a]), ppid,
                   start_ns=start, details=read_details(pid))


def read_details(pid: int) -> Details:
    def read(name: str) -> bytes | None:
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                return f.read()
        except OSError:
            return None

    def link(name: str) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/{name}")
        except OSError:
            return None

    # /proc's links name paths from our root; the process sees them from its own
    root = link("root")
    stat, status, exe, cwd = read("stat"), read("status"), _below(root, link("exe")), _below(root, link("cwd"))
    found = re.search(rb"^CapEff:\s*([0-9a-f]+)", status or b"", re.M)
    try:
        tty = int(_stat_fields(stat)[4]) if stat else None
    except (ValueError, IndexError):
        tty = None
    return Details(tty=tty, cwd=cwd, cap_effective=int(found[1], 16) if found else None,
                   exe_from_memfd=None if exe is None else exe.startswith("/memfd:"),
                   exe_upper_layer=None if exe is None else _in_upper_layer(pid, exe))


def _below(root: str | None, path: str | None) -> str | None:
    """`path` (from our root) as a process whose root is `root` names it."""
    if path is None or root in (None, "/") or not path.startswith("/"):
        return path  # ours too, or not a path (a memfd's name)
    if path == root:
        return "/"
    return path[len(root):] if path.startswith(root + "/") else path


def _in_upper_layer(pid: int, exe: str) -> bool | None:
    """Whether the executable is in the upper (writable) dir of the overlay the process's
    root is: written after the container started. None when its root is no overlay."""
    upper = _upper_dir(pid)
    return None if upper is None else os.path.lexists(os.path.join(upper, exe.lstrip("/")))


def _upper_dir(pid: int) -> str | None:
    """The upper dir of the overlay mounted at the process's root, if it is one. (Read
    at every exec: mount namespace ids are reused, so a cache by namespace could lie.)"""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/" and " - overlay " in line:
            found = re.search(r"(?:^|,)upperdir=([^,]+)", line.split(" - ", 1)[1].split()[-1])
            if found:
                return found[1]
    return None


def capability_text(mask: int) -> str:
    """Capabilities as Falco renders them: names, space-separated (CAP_<n> when unnamed)."""
    names = uapi.capabilities()
    return " ".join(names.get(bit, f"CAP_{bit}") for bit in range(64) if mask >> bit & 1)


class ProcessTable:
    def __init__(self, table: SyscallTable, clock, capacity: int = 65536, ancestors: int = 5,
                 details: Callable[[int], Details] = read_details):
        self.clock = clock  # kernel (monotonic) time to wall clock
        self.details = details  # what /proc says of a pid that just exec'ed
        self.capacity = capacity
        self.ancestors = ancestors  # how many generations records name (proc.anames)
        self.entries: OrderedDict[int, Process] = OrderedDict()
        self._versions: dict[int, int] = {}  # pid -> serial of its entry (a new one at each change)
        self._children: Counter = Counter()  # pid -> entries that name it as their parent
        self._exited: set[int] = set()       # gone, kept for the children that name them
        self._retiring: list[tuple[int, int]] = []  # (pid, serial) of the last batch's exits
        self._serial = itertools.count(1)
        self._exec_nrs = [table.numbers[name] for name in EXEC if name in table.numbers]
        self._table = table

    def scan(self) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                process = read_proc(int(entry.name))
                if process:
                    self._put(int(entry.name), replace(process, start_ns=self.clock.to_epoch(process.start_ns)))

    def _put(self, pid: int, process: Process) -> None:
        old = self.entries.get(pid)
        if old is not None:
            self._children[old.ppid] -= 1
        self._exited.discard(pid)  # known anew: not gone (or a reused pid)
        self._children[process.ppid] += 1
        self.entries[pid] = process
        self.entries.move_to_end(pid)
        self._versions[pid] = next(self._serial)
        while len(self.entries) > self.capacity:
            self._remove(next(iter(self.entries)))

    def _remove(self, pid: int) -> Process:
        process = self.entries.pop(pid)
        self._versions.pop(pid, None)
        self._exited.discard(pid)
        self._children[process.ppid] -= 1
        if self._children[process.ppid] <= 0:
            del self._children[process.ppid]
        return process

    def _retire(self) -> None:
        """Drop the processes that exited in the last batch (its records are made by
        now), and each gone ancestor that no entry names as its parent any more."""
        for pid, serial in self._retiring:
            if pid in self.entries and self._versions.get(pid) == serial:  # not a reused pid
                self._exited.add(pid)
            while pid in self._exited and not self._children.get(pid):
                pid = self._remove(pid).ppid

    def version(self, pid: int) -> int:
        """A number that changes whenever what get(pid) gives may: the serials of the
        entries it reads (the process's and its ancestors'). A cycle of ppids only
        repeats serials: the walk is bounded anyway."""
        serials, at = [], pid
        for _ in range(self.ancestors + 1):
            serials.append(self._versions.get(at, 0))
            entry = self.entries.get(at)
            if entry is None:
                break
            at = entry.ppid
        return hash(tuple(serials))

    def apply(self, arrays: dict[str, list[np.ndarray]]) -> None:
        """Learn a batch's forks and successful execs, in the order they happened; its
        exits take effect at the next batch."""
        self._retire()
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
                self._put(int(event["child_pid"]),
                          replace(parent, ppid=pid, start_ns=self.clock.to_epoch(header["ktime_ns"])))
            else:
                evt = self._table.decode_args(event)
                known = self.entries.get(pid) or Process("", "", "", int(header["ppid"]))
                # Gone already: unknown. (What it had before the exec could be another
                # root's, and capabilities change at exec.)
                details = self.details(pid)
                self._put(pid, replace(known, name=c_string(header["comm"]), exe=evt["filename"],
                                       cmdline=cmdline(evt.get("argv", [])), details=details))
        # After the batch's forks: a process may fork and exit within one batch.
        self._retiring = [(pid, self._versions.get(pid, 0)) for exits in arrays.get("exit", ())
                          for pid in exits["hdr"]["pid"].tolist()]

    def get(self, pid: int) -> dict:
        """The proc fields records carry: exe, cmdline, and the lineage (pname, pexe,
        pcmdline, anames: the names of the parent, grandparent, ...)."""
        process = self.entries.get(pid)
        if process is None:
            return {}
        fields = {"exe": process.exe, "cmdline": process.cmdline}
        if process.start_ns is not None:
            fields["start_ts"] = process.start_ns
        fields.update((k, v) for k, v in vars(process.details).items() if v is not None)
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

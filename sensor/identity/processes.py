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

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from sensor.identity import proc_walk, typed_dicts
from sensor.system import uapi
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


class Image(NamedTuple):
    """What a process is, apart from its place in the tree: a fork's child shares its
    parent's until it execs."""
    name: str | bytes
    exe: str | bytes
    cmdline: str | bytes
    details: Details


class ProcessTable:
    """The entries live in compiled code (sensor.identity.proc_walk); this side interns
    their images and does what needs Python: an exec's arguments and /proc details."""

    def __init__(self, table: SyscallTable, clock, capacity: int = 65536, ancestors: int = 5,
                 details: Callable[[int], Details] = read_details):
        self.clock = clock  # kernel (monotonic) time to wall clock
        self.details = details  # what /proc says of a pid that just exec'ed
        self.capacity = capacity
        self.ancestors = ancestors  # how many generations records name (proc.anames)
        self._rows, self._children, self._state, self._free = proc_walk.new_state(_FIRST_ROOM)
        self._counters = np.zeros(proc_walk.FREE + 1, np.int64)
        self._counters[proc_walk.FREE] = _FIRST_ROOM
        self._images: list[Image] = []
        self._image_ids: dict[Image, int] = {}
        self._kept = 0  # images in use at the last collection
        # The last batch's exits: their pids and their entries' serials then.
        self._retiring = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._exec_nrs = np.array([table.numbers[name] for name in EXEC if name in table.numbers], np.int64)
        self._table = table
        # Compiled (or loaded from Numba's cache) now, not at the first batch that needs
        # them; the writes on a table of their own.
        self.apply({})
        self.get(0), self.versions(np.zeros(1, np.int64)), self.parents(), len(self)
        rows, children, state, free = proc_walk.new_state(1)
        counters = np.array([0, 0, 1], np.int64)
        proc_walk.put(rows, children, state, free, counters, 1, 0, proc_walk.NO_START, 0)
        proc_walk.renumber_images(rows, state, 1)

    def __len__(self) -> int:
        return typed_dicts.size(self._rows)

    def __contains__(self, pid: int) -> bool:
        return proc_walk.row_of(self._rows, pid) >= 0

    def pids(self) -> list[int]:
        return list(self.parents())

    def entry(self, pid: int) -> Process | None:
        r = proc_walk.row_of(self._rows, pid)
        if r < 0:
            return None
        row = self._state[r]
        image = self._images[row[proc_walk.IMAGE]]
        start = int(row[proc_walk.START])
        return Process(image.name, image.exe, image.cmdline, int(row[proc_walk.PPID]),
                       None if start == proc_walk.NO_START else start, image.details)

    def put(self, pid: int, process: Process) -> None:
        """An entry for pid (a new one, or one that replaces what it was)."""
        self._put(pid, process)
        self._bound()

    def scan(self) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                process = read_proc(int(entry.name))
                if process:
                    self._put(int(entry.name), replace(process, start_ns=self.clock.to_epoch(process.start_ns)))
        self._bound()

    def version(self, pid: int) -> int:
        """A number that changes whenever what get(pid) gives may (proc_walk.versions)."""
        return int(self.versions(np.array([pid], np.int64))[0])

    def versions(self, pids: np.ndarray) -> np.ndarray:
        return proc_walk.versions(self._rows, self._state, pids.astype(np.int64), self.ancestors)

    def apply(self, arrays: dict[str, list[np.ndarray]]) -> None:
        """Learn a batch's forks and successful execs, in the order they happened; its
        exits take effect at the next batch."""
        proc_walk.retire(self._rows, self._children, self._state, self._free, self._counters, *self._retiring)
        forks = list(arrays.get("fork", ()))
        execs = [g[np.isin(g["nr"], self._exec_nrs) & (g["result"] == 0)] for g in arrays.get("syscall", ())]
        execs = [g for g in execs if len(g)]
        forked = np.concatenate(forks) if forks else None
        # An exec's image depends on its event and /proc alone: made here, for the walk.
        exec_pid = np.concatenate([g["hdr"]["pid"] for g in execs] or [np.zeros(0, np.uint32)]).astype(np.int64)
        exec_ppid = np.concatenate([g["hdr"]["ppid"] for g in execs] or [np.zeros(0, np.uint32)]).astype(np.int64)
        exec_image = np.array([self._intern(self._exec_image(event, evt)) for g in execs
                               for event, evt in zip(g, self._table.decode_many(g))], np.int64)
        parts = ([(proc_walk.FORKS, forked["hdr"]["ktime_ns"])] if forked is not None else []) + \
            [(proc_walk.EXECS, g["hdr"]["ktime_ns"]) for g in execs]
        order = np.argsort(np.concatenate([t for _, t in parts] or [np.zeros(0, np.uint64)]), kind="stable")
        codes = np.concatenate([np.full(len(t), code) for code, t in parts] or [np.zeros(0, np.int64)])[order]
        rows = np.concatenate(([np.arange(len(forked))] if forked is not None else [])
                              + ([np.arange(len(exec_pid))] if execs else []) or [np.zeros(0, np.int64)])[order]
        fork_parent, fork_child, fork_ktime = (
            (forked["hdr"]["pid"].astype(np.int64), forked["child_pid"].astype(np.int64),
             forked["hdr"]["ktime_ns"].astype(np.int64)) if forked is not None else (np.zeros(0, np.int64),) * 3)
        self._make_room(len(rows))
        position = 0
        while True:
            position, why = proc_walk.walk(position, self._rows, self._children, self._state, self._free,
                                           self._counters, codes, rows, fork_parent, fork_child, fork_ktime,
                                           self.clock.offset, exec_pid, exec_ppid, exec_image)
            if why == proc_walk.DONE:
                break
            # A fork by a parent the table does not know: named after the event's comm.
            header = forked[rows[position]]["hdr"]
            parent = Process(c_string(header["comm"]), "", "", int(header["ppid"]))
            self._put(int(fork_child[rows[position]]),
                      replace(parent, ppid=int(header["pid"]), start_ns=self.clock.to_epoch(header["ktime_ns"])))
            position += 1
        # After the batch's forks: a process may fork and exit within one batch.
        exits = np.concatenate([e["hdr"]["pid"] for e in arrays.get("exit", ())] or [np.zeros(0, np.uint32)])
        exits = exits.astype(np.int64)
        self._retiring = (exits, proc_walk.serials_of(self._rows, self._state, exits))
        self._bound()

    def _exec_image(self, event: np.void, evt: dict) -> Image:
        """What a process is after its exec (`evt`: the exec's decoded arguments)."""
        # Gone already: unknown. (What it had before the exec could be another root's,
        # and capabilities change at exec.)
        details = self.details(int(event["hdr"]["pid"]))
        return Image(c_string(event["hdr"]["comm"]), evt["filename"], cmdline(evt.get("argv", [])), details)

    def get(self, pid: int) -> dict:
        """The proc fields records carry: exe, cmdline, and the lineage (pname, pexe,
        pcmdline, anames: the names of the parent, grandparent, ...)."""
        process = self.entry(pid)
        if process is None:
            return {}
        fields = {"exe": process.exe, "cmdline": process.cmdline}
        if process.start_ns is not None:
            fields["start_ts"] = process.start_ns
        fields.update((k, v) for k, v in vars(process.details).items() if v is not None)
        parent = self.entry(process.ppid)
        if parent is not None:
            fields.update(pname=parent.name, pexe=parent.exe, pcmdline=parent.cmdline)
        names, seen, ancestor_pid = [], {pid}, process.ppid
        while len(names) < self.ancestors and ancestor_pid not in seen:  # pid reuse can make loops
            ancestor = self.entry(ancestor_pid)
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
        pids, rows = typed_dicts.items(self._rows)
        return dict(zip(pids.tolist(), self._state[rows, proc_walk.PPID].tolist()))

    # ---- the entries, from Python ----

    def _put(self, pid: int, process: Process) -> None:
        image = self._intern(Image(process.name, process.exe, process.cmdline, process.details))
        self._make_room(1)
        proc_walk.put(self._rows, self._children, self._state, self._free, self._counters, pid, process.ppid,
                      proc_walk.NO_START if process.start_ns is None else process.start_ns, image)

    def _intern(self, image: Image) -> int:
        image_id = self._image_ids.get(image)
        if image_id is None:
            image_id = self._image_ids[image] = len(self._images)
            self._images.append(image)
        return image_id

    def _make_room(self, count: int) -> None:
        self._state, self._free = proc_walk.grown(self._state, self._free, self._counters, count)

    def _bound(self) -> None:
        """The entries written least recently go beyond `capacity`; images no entry
        names go once they are many."""
        proc_walk.evict(self._rows, self._children, self._state, self._free, self._counters, self.capacity)
        if len(self._images) > 2 * self._kept + _COLLECT_AT:
            kept = proc_walk.renumber_images(self._rows, self._state, len(self._images))
            self._images = [self._images[i] for i in kept.tolist()]
            self._image_ids = {image: i for i, image in enumerate(self._images)}
            self._kept = len(self._images)


_FIRST_ROOM = 1024
_COLLECT_AT = 1024  # images beyond twice those in use at the last collection

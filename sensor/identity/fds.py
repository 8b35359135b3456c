"""Per-process fd tables: fd -> what it is (file, directory, ipv4, ipv6, unix, memfd, ...),
its name and addresses, so that an event that carries only an fd number can say what
the fd is (Falco's fd.* fields: "Redirect STDOUT/STDIN to Network Connection").

Kept from the fd syscalls the kernel captures (open*, creat, socket, socketpair, pipe*,
bind, connect, listen, accept*, memfd_create, dup*, fcntl(F_DUPFD*), close), inherited
at fork as the kernel does, trimmed of close-on-exec fds at exec, dropped at exit.
Bounded: at most `max_processes` tables (least recently used go first) of at most
`max_fds` fds each (more are not kept, and counted in `overflow`). The fds a process
had before the sensor started are not known.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from sensor.kernel.batches import time_order
from sensor.kernel.syscalls import EXEC, OPENS, SyscallTable, open_flags

_DUPS = {"dup", "dup2", "dup3", "fcntl"}
_PAIRS = {"pipe", "pipe2", "socketpair"}
FD_SYSCALLS = set(OPENS) | _DUPS | _PAIRS | {"socket", "bind", "connect", "listen", "accept", "accept4", "memfd_create",
                                         "close"}
_DOMAINS = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6", socket.AF_UNIX: "unix", socket.AF_NETLINK: "netlink"}
_L4 = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp", socket.SOCK_RAW: "raw"}


# A decoded sockaddr as a tuple of its (key, value) items: hashable, as all of Fd is.
Address = tuple[tuple[str, object], ...]


class Fd(NamedTuple):  # a tuple: made for every open, which a frozen dataclass makes slowly
    type: str                                  # file, directory, ipv4, ipv6, unix, netlink, socket, pipe, memfd
    name: str | bytes = ""                     # path, memfd:<name>, or local->remote for sockets
    l4proto: str | None = None
    local: Address | None = None
    remote: Address | None = None
    role: str | None = None                    # client (connected) or server (listening, accepted)
    cloexec: bool = False

    def as_record(self, num: int) -> dict:
        fields = {"num": num, "type": self.type, "name": self.name or _endpoints(self.local, self.remote)}
        if self.l4proto is not None:
            fields["l4proto"] = self.l4proto
        if self.local is not None:
            fields["local"] = dict(self.local)
        if self.remote is not None:
            fields["remote"] = dict(self.remote)
        if self.role is not None:
            fields["role"] = self.role
        return fields


class Note(NamedTuple):
    """What the fd an event names was at the time: its number and its entry."""
    num: int
    fd: Fd

    def as_record(self) -> dict:
        return self.fd.as_record(self.num)


class FdNotes:
    """What FdTable.apply gives: each fd event's note by (tid, kernel time), in time
    order, as columns, with a 64-bit hash of each (of what as_record() says, and
    cloexec). The hash is taken as the note is made, while it is fresh in memory: the
    rule engine keys events by it (sensor.detect.rows) without touching the notes again."""

    def __init__(self):
        # Machine words, not Python ints: numpy reads them without a copy (and once it
        # does, rows.Notes, they refuse to grow: a batch's notes are all made by then).
        self.tids = array.array("Q")
        self.times = array.array("Q")
        self.digests = array.array("q")  # signed, as hash() gives them
        self.notes: list[Note] = []
        self._by_key: dict[tuple[int, int], Note] | None = None

    def add(self, tid: int, ktime: int, note: Note) -> None:
        self.tids.append(tid)
        self.times.append(ktime)
        self.notes.append(note)
        self.digests.append(hash(note))

    def __len__(self) -> int:
        return len(self.notes)

    def items(self):
        return zip(zip(self.tids, self.times), self.notes)

    def get(self, tid: int, ktime: int) -> Note | None:
        """The note of thread tid's event at ktime (records are made for few events:
        the lookup table is built at the first)."""
        if self._by_key is None:
            self._by_key = dict(self.items())
        return self._by_key.get((tid, ktime))


def _address(decoded: dict | None) -> Address | None:
    return tuple(decoded.items()) if decoded is not None else None


def _endpoint(items: Address | None) -> str:
    if not items:
        return ""
    address = dict(items)
    if "path" in address:
        return str(address["path"])
    host = address.get("addr", "")
    return f"[{host}]:{address.get('port', 0)}" if ":" in host else f"{host}:{address.get('port', 0)}"


def _endpoints(local: Address | None, remote: Address | None) -> str:
    return f"{_endpoint(local)}->{_endpoint(remote)}" if remote else _endpoint(local)


class FdTable:
    def __init__(self, table: SyscallTable, max_processes: int = 16384, max_fds: int = 1024):
        self.table = table
        self.max_processes = max_processes
        self.max_fds = max_fds
        self.processes: OrderedDict[int, dict[int, Fd]] = OrderedDict()
        self.overflow = 0
        self._nrs = [table.numbers[n] for n in FD_SYSCALLS | set(EXEC) if n in table.numbers]

    def get(self, pid: int, fd: int) -> Fd | None:
        return self.processes.get(pid, {}).get(fd)

    def apply(self, arrays: dict[str, list[np.ndarray]]) -> FdNotes:
        """Learn a batch's fd events in the order they happened. Returns, for each event
        that names an fd, what that fd was at the time, keyed by (tid, kernel time), in
        time order."""
        forks, exits = list(arrays.get("fork", ())), list(arrays.get("exit", ()))
        syscalls = [g[np.isin(g["nr"], self._nrs)] for g in arrays.get("syscall", ())]
        # Columns read in bulk, then walked in time order as Python values.
        columns = ([(g["hdr"]["pid"].tolist(), g["child_pid"].tolist()) for g in forks]
                   + [(g["hdr"]["pid"].tolist(), None) for g in exits]
                   + [(g["hdr"]["pid"].tolist(), (g["hdr"]["tid"].tolist(), g["hdr"]["ktime_ns"].tolist(),
                                                  self.table.decode_many(g))) for g in syscalls])
        n_forks, n_exits = len(forks), len(exits)
        notes = FdNotes()
        for which, row in zip(*time_order(forks + exits + syscalls)):
            pids, rest = columns[which]
            if which < n_forks:
                self._fork(pids[row], rest[row])
            elif which < n_forks + n_exits:
                self.processes.pop(pids[row], None)
            else:
                tids, times, evts = rest
                note = self._syscall(pids[row], evts[row])
                if note is not None:
                    notes.add(tids[row], times[row], note)
        return notes

    def _fork(self, parent: int, child: int) -> None:
        fds = self.processes.get(parent)
        if fds:
            self._table_of(child).update(fds)

    def _table_of(self, pid: int) -> dict[int, Fd]:
        fds = self.processes.get(pid)
        if fds is None:
            fds = self.processes[pid] = {}
            while len(self.processes) > self.max_processes:
                self.processes.popitem(last=False)
        self.processes.move_to_end(pid)
        return fds

    def _put(self, pid: int, num: int, fd: Fd) -> None:
        fds = self._table_of(pid)
        if num not in fds and len(fds) >= self.max_fds:
            self.overflow += 1
            return
        fds[num] = fd

    def _syscall(self, pid: int, evt: dict) -> Note | None:
        """Apply one fd syscall; the `fd` note for its record, if it names one."""
        if "res" not in evt:
            return None  # sent at enter, without a result: nothing is known to have changed
        kind, res = evt["type"], evt["res"]
        fds = self.processes.get(pid, {})
        if kind in EXEC:
            if res == 0 and fds:
                self.processes[pid] = {n: fd for n, fd in fds.items() if not fd.cloexec}
            return None
        if kind in OPENS:
            if res >= 0:
                flags = open_flags(evt)
                self._put(pid, res, Fd("directory" if flags & os.O_DIRECTORY else "file",
                                       self._path(fds, evt.get("dirfd"), evt["name"]),
                                       cloexec=bool(flags & os.O_CLOEXEC)))
            return None
        if kind in ("socket", "socketpair"):
            if res >= 0:
                socktype = evt["socktype"]
                domain = _DOMAINS.get(evt["domain"], "socket")
                fd = Fd(domain, l4proto=_L4.get(socktype & 0xF) if domain.startswith("ipv") else None,
                        cloexec=bool(socktype & socket.SOCK_CLOEXEC))
                numbers = (evt["fds"] or ()) if kind == "socketpair" else (res,)
                for number in numbers:
                    self._put(pid, number, fd)
            return None
        if kind in ("pipe", "pipe2"):
            if res == 0:
                for number in evt["fds"] or ():
                    self._put(pid, number, Fd("pipe", cloexec=bool(evt.get("flags", 0) & os.O_CLOEXEC)))
            return None
        if kind == "memfd_create":
            if res >= 0:
                self._put(pid, res, Fd("memfd", f"memfd:{evt['name']}", cloexec=bool(evt["flags"] & os.MFD_CLOEXEC)))
            return None
        number = evt.get("fd", evt.get("oldfd"))
        current = fds.get(number)
        if kind == "close":
            if res != -errno.EBADF:  # close releases the fd even when it fails otherwise
                fds.pop(number, None)
            return Note(number, current) if current else None
        if kind in _DUPS:
            if res >= 0 and current is not None:
                cloexec = (kind == "dup3" and evt["flags"] & os.O_CLOEXEC) or \
                    (kind == "fcntl" and evt["cmd"] == fcntl.F_DUPFD_CLOEXEC)
                self._put(pid, res, current._replace(cloexec=bool(cloexec)))
                return Note(res, current._replace(cloexec=bool(cloexec)))
            return Note(number, current) if current else None
        if kind in ("accept", "accept4"):
            if res >= 0 and current is not None:
                accepted = current._replace(name="", remote=_address(evt.get("addr")), role="server",
                                            cloexec=bool(evt.get("flags", 0) & socket.SOCK_CLOEXEC))
                self._put(pid, res, accepted)
                return Note(res, accepted)
            return Note(number, current) if current else None
        if current is not None and (res == 0 or (kind == "connect" and res == -errno.EINPROGRESS)):
            if kind == "bind":
                current = current._replace(local=_address(evt.get("addr")))
            elif kind == "connect":
                current = current._replace(remote=_address(evt.get("addr")), role="client")
            elif kind == "listen":
                current = current._replace(role="server")
            fds[number] = current
        return Note(number, current) if current else None

    @staticmethod
    def _path(fds: dict[int, Fd], dirfd: int | None, name) -> str | bytes:
        """A path as given, or joined to its dirfd's directory when relative and known."""
        base = fds.get(dirfd) if dirfd is not None else None
        if base is None or base.type != "directory" or isinstance(name, bytes) or name.startswith("/") \
                or isinstance(base.name, bytes):
            return name
        return os.path.join(base.name, name)


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

import os
import socket
from typing import NamedTuple

import numpy as np
from numba import types
from numba.typed import List

from sensor.identity import fd_walk, typed_dicts
from sensor.kernel import words
from sensor.kernel.syscalls import SyscallTable, sockaddr
from sensor.records import untrusted_text

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
    order, as columns: the fd's number, its entry (id * 2 + close-on-exec, into
    `entries`) and a 64-bit hash of what the note says, by which the rule engine keys
    events (sensor.detect.rows) without making the notes. A Note is made only for an
    event that gets a record."""

    def __init__(self, tids=None, times=None, digests=None, nums=None, packed=None, entries: list[Fd] = ()):
        empty = np.zeros(0, np.uint64)
        self.tids = empty if tids is None else tids
        self.times = empty if times is None else times
        self.digests = empty if digests is None else digests
        self.nums = np.zeros(0, np.int64) if nums is None else nums
        self.packed = np.zeros(0, np.int64) if packed is None else packed
        self.entries = entries

    def __len__(self) -> int:
        return len(self.tids)

    def note(self, k: int) -> Note:
        packed = int(self.packed[k])
        return Note(int(self.nums[k]), self.entries[packed >> 1]._replace(cloexec=bool(packed & 1)))

    def items(self):
        return (((tid, ktime), self.note(k)) for k, (tid, ktime) in enumerate(zip(self.tids.tolist(),
                                                                                  self.times.tolist())))

    def get(self, tid: int, ktime: int) -> Note | None:
        """The note of thread tid's event at ktime (of two, the last), found by time."""
        found = None
        for k in range(np.searchsorted(self.times, ktime), len(self.times)):
            if self.times[k] != ktime:
                break
            if self.tids[k] == tid:
                found = k
        return None if found is None else self.note(found)


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
    """The tables live in compiled code (sensor.identity.fd_walk); this side names the
    entries the walk makes (an Fd value, close-on-exec apart, per entry) from their keys."""

    def __init__(self, table: SyscallTable, max_processes: int = 16384, max_fds: int = 1024):
        self.max_processes = max_processes
        self.max_fds = max_fds
        self._plan = fd_walk.Plan(table)
        self._tables, self._stamps = fd_walk.new_tables()
        self._counters = np.zeros(fd_walk.NAMING + 1, np.int64)
        self._entries: list[Fd] = []
        self._entry_digest = np.zeros(_FIRST_ROOM, np.uint64)
        self._entry_dir_base = np.zeros(_FIRST_ROOM, np.bool_)
        self._kept = 0  # entries in use at the last collection
        self._forget_paths()
        self._rows = List.empty_list(_ROWS)  # each batch's syscall arrays, as words
        # A typed list's own methods, called from Python, are compiled in each process.
        self._rows.append(np.zeros((0, 1), np.uint64))
        # Compiled (or loaded from Numba's cache) now, not at the first batch that needs
        # them; the writes on tables of their own.
        self.apply({})
        self.fds(0), self.get(0, 0), self.pids(), len(self)
        fd_walk.note_digest(self._entry_digest, 0, 0)
        spare, _ = fd_walk.new_tables()
        fd_walk.renumber(spare, np.zeros(1, np.int64)), fd_walk.referenced(spare, 1)

    @property
    def overflow(self) -> int:
        """fds not kept: their process had max_fds already."""
        return int(self._counters[fd_walk.OVERFLOW])

    def __len__(self) -> int:
        return typed_dicts.size(self._tables)

    def sizes(self) -> dict[str, int]:
        """What the tables hold: processes, distinct fd descriptions, cached paths, and
        the fds not kept."""
        return {"processes": len(self), "entries": len(self._entries),
                "paths": int(self._counters[fd_walk.KEYS]), "overflow": self.overflow}

    def pids(self) -> list[int]:
        return typed_dicts.keys(self._tables).tolist()

    def fds(self, pid: int) -> dict[int, Fd]:
        nums, packed = fd_walk.table_items(self._tables, pid)
        return {num: self._fd(p) for num, p in zip(nums.tolist(), packed.tolist())}

    def get(self, pid: int, fd: int) -> Fd | None:
        packed = self._packed(pid, fd)
        return None if packed is None else self._fd(packed)

    def apply(self, arrays: dict[str, list[np.ndarray]]) -> FdNotes:
        """Learn a batch's fd events in the order they happened. Returns, for each event
        that names an fd, what that fd was at the time, keyed by (tid, kernel time), in
        time order."""
        forks, exits = list(arrays.get("fork", ())), list(arrays.get("exit", ()))
        # The syscall events the tables learn from, by their rows (not copied out).
        groups = [np.ascontiguousarray(g) for g in arrays.get("syscall", ())]
        chosen = [np.flatnonzero(self._plan.ops(g["nr"]) != fd_walk.IGNORED) for g in groups]
        groups, chosen = [g for g, c in zip(groups, chosen) if len(c)], [c for c in chosen if len(c)]
        parts = [np.concatenate(forks) if forks else None, np.concatenate(exits) if exits else None]
        times = [p["hdr"]["ktime_ns"] for p in parts if p is not None] + \
            [g["hdr"]["ktime_ns"][c] for g, c in zip(groups, chosen)]
        codes = [np.full(len(p), code) for code, p in enumerate(parts) if p is not None] + \
            [np.full(len(c), fd_walk.SYSCALLS + i) for i, c in enumerate(chosen)]
        rows = [np.arange(len(p)) for p in parts if p is not None] + chosen
        order = np.argsort(np.concatenate(times or [np.zeros(0, np.uint64)]), kind="stable")
        order_code = np.concatenate(codes or [np.zeros(0, np.int64)])[order]
        order_row = np.concatenate(rows or [np.zeros(0, np.int64)])[order]
        forked, exited = parts
        fork_parent = _pids(forked, lambda f: f["hdr"]["pid"])
        fork_child = _pids(forked, lambda f: f["child_pid"])
        exit_pid = _pids(exited, lambda e: e["hdr"]["pid"])
        raw = self._rows  # reused: a new typed list costs more than the batch's walk
        raw.clear()
        for g in groups:
            raw.append(words.as_words(g))
        count = sum(len(c) for c in chosen)
        notes = (np.empty(count, np.uint64), np.empty(count, np.uint64), np.empty(count, np.uint64),
                 np.empty(count, np.int64), np.empty(count, np.int64))
        naming = np.empty(count, np.int64)  # the keys of the entries the walk makes
        self._counters[fd_walk.NOTES] = 0
        self._entry_room(len(self._entries) + count)
        p = self._plan
        position = 0
        while True:
            self._counters[fd_walk.NEXT] = len(self._entries)
            position, why = fd_walk.walk(
                position, self._tables, self._stamps, self._counters, order_code, order_row, fork_parent, fork_child,
                exit_pid, raw, p.fields, p.result_word, p.args_word, p.slot_len_at, p.data_at, p.slot_size,
                p.no_result, p.columns, self._entry_digest, self._entry_dir_base, self._paths, self._key_entry,
                self._key_meta, self._arena, self.max_fds, *notes, naming)
            self._name_new_entries(naming)
            if why == fd_walk.DONE:
                break
            self._grow_paths()  # FULL: room for more keys, then on from the same event
            self._entry_room(len(self._entries) + count)
        made = int(self._counters[fd_walk.NOTES])
        result = FdNotes(*(column[:made] for column in notes), entries=self._entries)
        self._tidy()
        return result

    # ---- what the compiled walk leaves to Python ----

    def _name_new_entries(self, keys: np.ndarray) -> None:
        """The entries the walk made for keys it met for the first time, described from
        what the keys hold: a path's bytes, its base and whether a directory was opened;
        a socket's domain and type, or the address its new state names."""
        count = int(self._counters[fd_walk.NAMING])
        self._counters[fd_walk.NAMING] = 0
        arena = self._arena.view(np.uint8)
        for k in keys[:count].tolist():
            offset, length, base, kind, extra = self._key_meta[k].tolist()
            raw = arena[8 * offset:8 * offset + length].tobytes()
            fd = _described(kind, extra, raw, self._entries[base] if base >= 0 else None)
            self._entries.append(fd)

    # ---- the tables, from Python ----

    def _entry_room(self, count: int) -> None:
        """Room for `count` entries' digests and directory bits."""
        room = len(self._entry_digest)
        while room < count:
            room *= 2
        if room > len(self._entry_digest):
            digest, dir_base = np.zeros(room, np.uint64), np.zeros(room, np.bool_)
            digest[:len(self._entry_digest)], dir_base[:len(self._entry_dir_base)] = \
                self._entry_digest, self._entry_dir_base
            self._entry_digest, self._entry_dir_base = digest, dir_base

    def _packed(self, pid: int, num: int) -> int | None:
        packed = fd_walk.lookup(self._tables, pid, num)
        return None if packed < 0 else packed

    def _fd(self, packed: int) -> Fd:
        return self._entries[packed >> 1]._replace(cloexec=bool(packed & 1))

    # ---- bounds ----

    def _tidy(self) -> None:
        """The least recently written tables go beyond max_processes; entries and paths
        no fd names go once they are many."""
        fd_walk.evict(self._tables, self._stamps, self.max_processes)
        if max(len(self._entries), int(self._counters[fd_walk.KEYS])) > 2 * self._kept + _COLLECT_AT:
            used = fd_walk.referenced(self._tables, len(self._entries))
            keep = np.flatnonzero(used)
            new_ids = np.full(len(self._entries), -1, np.int64)
            new_ids[keep] = np.arange(len(keep))
            fd_walk.renumber(self._tables, new_ids)
            # A new list: the notes already given still read the old one.
            self._entries = [self._entries[i] for i in keep.tolist()]
            room = max(_FIRST_ROOM, 1 << int(len(keep)).bit_length())
            digest, dir_base = np.zeros(room, np.uint64), np.zeros(room, np.bool_)
            digest[:len(keep)], dir_base[:len(keep)] = self._entry_digest[keep], self._entry_dir_base[keep]
            self._entry_digest, self._entry_dir_base = digest, dir_base
            self._kept = len(keep)
            self._forget_paths()

    def _forget_paths(self) -> None:
        self._paths = fd_walk.new_paths()
        self._key_entry = np.full(_FIRST_ROOM, -1, np.int64)
        self._key_meta = np.zeros((_FIRST_ROOM, fd_walk.KEY_EXTRA + 1), np.int64)
        self._arena = np.zeros(_FIRST_ROOM * 8, np.uint64)  # paths' words
        self._counters[fd_walk.KEYS] = self._counters[fd_walk.ARENA] = 0

    def _grow_paths(self) -> None:
        self._key_entry = np.concatenate([self._key_entry, np.full_like(self._key_entry, -1)])
        self._key_meta = np.concatenate([self._key_meta, np.zeros_like(self._key_meta)])
        self._arena = np.concatenate([self._arena, np.zeros_like(self._arena)])


_ROWS = types.uint64[:, ::1]  # a syscall array's rows as words (kernel.words.as_words)
_FIRST_ROOM = 1024
_COLLECT_AT = 4096  # entries or paths beyond twice those in use at the last collection (about 2 MiB)
_U64 = (1 << 64) - 1


def _pids(events: np.ndarray | None, column) -> np.ndarray:
    return np.zeros(0, np.int64) if events is None else column(events).astype(np.int64)


def _is_dir_base(fd: Fd) -> bool:
    """Whether a relative path opened at this fd is known by name."""
    return fd.type == "directory" and isinstance(fd.name, str)


def _described(kind: int, extra: int, raw: bytes, base: Fd | None) -> Fd:
    """What a key's entry is (close-on-exec apart): see fd_walk's key kinds."""
    if kind == fd_walk.PATH:
        return _opened(untrusted_text(raw), bool(extra), base if base is not None and _is_dir_base(base) else None)
    if kind == fd_walk.SOCKET:
        domain = _DOMAINS.get(extra >> 16, "socket")
        return Fd(domain, l4proto=_L4.get(extra & 0xF) if domain.startswith("ipv") else None)
    if kind == fd_walk.PIPE:
        return Fd("pipe")
    if kind == fd_walk.MEMFD:
        return Fd("memfd", f"memfd:{untrusted_text(raw)}")
    address = tuple(sockaddr(raw).items()) if raw else None
    if kind == fd_walk.BIND:
        return base._replace(local=address)
    if kind == fd_walk.CONNECT:
        return base._replace(remote=address, role="client")
    if kind == fd_walk.LISTEN:
        return base._replace(role="server")
    return base._replace(name="", remote=address, role="server")  # ACCEPT: the connection's


def _opened(name: str | bytes, directory: bool, base: Fd | None) -> Fd:
    """What an open's fd is (close-on-exec apart): a path as given, or joined to its
    directory's (`base`, when the dirfd was a directory known by name) when relative."""
    if base is not None and isinstance(base.name, str) and isinstance(name, str) and not name.startswith("/"):
        name = os.path.join(base.name, name)
    return Fd("directory" if directory else "file", name)

"""The fd tables' compiled part: a batch's fork, exit and fd syscall events walked in
time order in Numba, straight from the drained rows, with no Python value per event.

What a table holds per fd is a number: an entry id (an index into FdTable's interned
Fd values) times two, plus the close-on-exec bit. An open names its entry through a
cache of the paths seen (hash -> key, the key's bytes kept to compare: a path that
hashes like another is never taken for it). A path not seen before gets a new entry
there and then, which Python names after the walk, all at once. The walk stops and
hands back to Python only when the cache has no room left.

Sockets, pipes and memfds are entries the same way: a socket's by its domain and type,
a bound, connected, listening or accepted socket's by the entry it came from and the
address bytes, a memfd's by its name. Python names those from the key too (the address
decoded there, once per distinct address). A key that hashes like another's gets an
entry of its own, not cached.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

import numba
import numpy as np
from numba import types
from numba.typed import Dict

from sensor.identity import typed_dicts
from sensor.kernel import layout, words
from sensor.kernel.syscalls import EXEC, OPENS, SyscallTable, open_flags

# What a syscall does to the tables (column OP of the plan). The ops from SOCKET on make
# entries that are also key kinds (KEY_KIND), as PATH is for opens.
IGNORED, OPEN, CLOSE, DUP, DUP3, FCNTL, EXECS, SOCKET, PAIR, MEMFD, BIND, CONNECT, LISTEN, ACCEPT = range(14)
PATH, PIPE = OPEN, PAIR  # the key kinds of an open's entry, and of a pipe's (a socketpair's is SOCKET's)
# The plan's columns, per syscall number: -1 where a syscall has no such argument.
(OP, FD_ARG, DIRFD_ARG, FLAGS_ARG, CMD_ARG, NAME_SLOT, HOW_SLOT, FIXED_FLAGS, DOMAIN_ARG, TYPE_ARG, ADDR_SLOT,
 FDS_SLOT) = range(12)
# Why a walk stopped.
DONE, FULL = range(2)
# The walk's counters (an int64 array that it updates in place): NEXT is the next entry
# id, NAMING how many of the entries it made are still to be named by Python.
CLOCK, OVERFLOW, NOTES, KEYS, ARENA, PENDING, NEXT, NAMING = range(8)
# A key's columns (besides its entry): where its bytes are in the arena, the entry it
# derives from (a path's directory, a socket's earlier state), its kind, and a number
# of its kind's (a path's: whether a directory was opened; a socket's: domain << 16 | type).
KEY_OFFSET, KEY_LENGTH, KEY_BASE, KEY_KIND, KEY_EXTRA = range(5)
# Where the order's events come from: forks, exits, then syscall group g at SYSCALLS + g.
FORKS, EXITS, SYSCALLS = range(3)
# The header and syscall fields the walk reads, as (byte offset, mask) rows of `fields`.
PID, TID, KTIME, NR, FLAGS = range(5)

_DUPS = {"dup": DUP, "dup2": DUP, "dup3": DUP3, "fcntl": FCNTL}
_SOCKETS = {"socket": SOCKET, "socketpair": PAIR, "pipe": PAIR, "pipe2": PAIR, "memfd_create": MEMFD, "bind": BIND,
            "connect": CONNECT, "listen": LISTEN, "accept": ACCEPT, "accept4": ACCEPT}
FD_SYSCALLS = set(OPENS) | set(_DUPS) | set(_SOCKETS) | {"close"}
# Constants as plain globals, which compiled code takes in as it is compiled.
_EBADF, _O_CLOEXEC, _O_DIRECTORY, _F_DUPFD_CLOEXEC = errno.EBADF, os.O_CLOEXEC, os.O_DIRECTORY, fcntl.F_DUPFD_CLOEXEC
_EINPROGRESS, _SOCK_CLOEXEC, _MFD_CLOEXEC = errno.EINPROGRESS, socket.SOCK_CLOEXEC, os.MFD_CLOEXEC
_SLASH = ord("/")


class Plan:
    """What the walk reads, derived from the syscall table and events.h."""

    def __init__(self, table: SyscallTable):
        self.table = table
        ops = {**dict.fromkeys(OPENS, OPEN), **_DUPS, **_SOCKETS, **dict.fromkeys(EXEC, EXECS), "close": CLOSE}
        self.columns = np.full((max(table.by_nr) + 1, FDS_SLOT + 1), -1, np.int64)
        self.columns[:, OP] = IGNORED
        for name, op in ops.items():
            syscall = table.syscalls.get(name)
            if syscall is None:
                continue
            row = self.columns[syscall.nr]
            row[OP] = op
            args = {arg: index for index, (arg, _) in enumerate(syscall.args)}
            slots = {index: slot for slot, index, _ in syscall.slots()}
            row[FD_ARG] = args.get("fd", args.get("oldfd", -1))
            row[DIRFD_ARG], row[FLAGS_ARG], row[CMD_ARG] = args.get("dirfd", -1), args.get("flags", -1), args.get("cmd", -1)
            row[NAME_SLOT] = slots.get(args.get("name", -1), -1)
            row[HOW_SLOT] = slots.get(args.get("how", -1), -1)
            row[DOMAIN_ARG], row[TYPE_ARG] = args.get("domain", -1), args.get("socktype", -1)
            row[ADDR_SLOT], row[FDS_SLOT] = slots.get(args.get("addr", -1), -1), slots.get(args.get("fds", -1), -1)
            if op == OPEN and row[FLAGS_ARG] < 0 and row[HOW_SLOT] < 0:
                row[FIXED_FLAGS] = open_flags({"type": name})  # creat's, implied
        events = layout.events()
        c = events.constants
        dtype = events.structs["mayfly_syscall_event"]
        hdr_at, hdr = dtype.fields["hdr"][1], dtype.fields["hdr"][0]
        self.fields = np.array([words.in_word(hdr, "pid", hdr_at), words.in_word(hdr, "tid", hdr_at),
                                words.in_word(hdr, "ktime_ns", hdr_at), words.in_word(dtype, "nr"),
                                words.in_word(dtype, "flags")], np.uint64)
        self.result_word, self.args_word = words.word(dtype, "result"), words.word(dtype, "args")
        self.slot_len_at, self.data_at = dtype.fields["slot_len"][1], dtype.fields["data"][1]
        self.slot_size, self.no_result = c["MAYFLY_STR_LEN"], c["MAYFLY_SYSCALL_NO_RESULT"]

    def ops(self, nrs: np.ndarray) -> np.ndarray:
        """Each syscall number's op."""
        nrs = nrs.astype(np.int64)
        known = nrs < len(self.columns)
        return np.where(known, self.columns[np.where(known, nrs, 0), OP], IGNORED)


def new_tables():
    """pid -> (fd -> entry id * 2 + close-on-exec), and pid -> when last written."""
    return (Dict.empty(types.int64, types.DictType(types.int64, types.int64)), Dict.empty(types.int64, types.int64))


def new_paths():
    return Dict.empty(types.uint64, types.int64)


# Python reads the tables through these and sensor.identity.typed_dicts.

@numba.njit(cache=True, nogil=True)
def lookup(tables, pid, num):
    """The packed entry of a process's fd (-1: none known)."""
    if pid in tables and num in tables[pid]:
        return tables[pid][num]
    return -1


@numba.njit(cache=True, nogil=True)
def table_items(tables, pid):
    """A process's fds and their packed entries."""
    return typed_dicts.items(tables[pid] if pid in tables else Dict.empty(types.int64, types.int64))


@numba.njit(cache=True, nogil=True)
def table_of(tables, stamps, counters, pid):
    """A process's table, made when it has none; it was used now."""
    if pid not in tables:
        tables[pid] = Dict.empty(types.int64, types.int64)
    stamps[pid] = counters[CLOCK]
    counters[CLOCK] += 1
    return tables[pid]


@numba.njit(cache=True, nogil=True, inline="always")
def _store(fds, max_fds, counters, num, packed):
    if len(fds) < max_fds or num in fds:
        fds[num] = packed
    else:
        counters[OVERFLOW] += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _int32(register):
    value = np.int64(register & np.uint64(0xFFFFFFFF))
    return value - (np.int64(1) << 32) if value >= np.int64(1) << 31 else value


@numba.njit(cache=True, nogil=True, inline="always")
def _slot_length(row, slot_len_at, data_at, slot_size, slot):
    """The bytes read into a slot, cut at the record's end, as sent."""
    at = slot_len_at + 2 * slot
    length = np.int64((row[at // 8] >> np.uint64(8 * (at % 8))) & np.uint64(0xFFFF))
    return max(min(length, row.shape[0] * 8 - (data_at + slot * slot_size)), 0)


@numba.njit(cache=True, nogil=True)
def note_digest(entry_digest, num, packed):
    """The hash the rule engine keys a note by: of its entry, number and close-on-exec bit."""
    return words.mix(words.mix(words.mix(np.uint64(0xFD), entry_digest[packed >> 1]), np.uint64(num)),
                     np.uint64(packed & 1))


@numba.njit(cache=True, nogil=True)
def walk(position, tables, stamps, counters, order_code, order_row, fork_parent, fork_child, exit_pid, groups,
         fields, result_word, args_word, slot_len_at, data_at, slot_size, no_result, plan, entry_digest,
         entry_dir_base, paths, key_entry, key_meta, arena, max_fds, note_tid, note_time, note_digest_out, note_num,
         note_packed, naming_key):
    """Apply the ordered events from `position` on; (where it stopped, why)."""
    none = Dict.empty(types.int64, types.int64)  # the table of a process that has none (it stays empty)
    # The last event's process and its table: events come in runs of one process's.
    cached_pid, fds, has_table = np.int64(-1), none, False
    while position < order_code.shape[0]:
        code, r = order_code[position], order_row[position]
        if code == FORKS:
            parent, child = fork_parent[r], fork_child[r]
            if parent in tables and len(tables[parent]):
                inherited = tables[parent]
                fds_of_child = table_of(tables, stamps, counters, child)
                for num, packed in inherited.items():
                    fds_of_child[num] = packed
                if child == cached_pid:
                    cached_pid = -1
            position += 1
            continue
        if code == EXITS:
            if exit_pid[r] in tables:
                del tables[exit_pid[r]]
                del stamps[exit_pid[r]]
            if exit_pid[r] == cached_pid:
                cached_pid = -1
            position += 1
            continue
        row = groups[code - SYSCALLS][r]
        if words.field(row, fields[FLAGS]) & np.uint64(no_result):
            position += 1  # sent at enter, without a result: nothing is known to have changed
            continue
        nr = np.int64(words.field(row, fields[NR]))
        op = plan[nr, OP]
        pid = np.int64(words.field(row, fields[PID]))
        if pid != cached_pid:
            cached_pid, has_table = pid, pid in tables
            fds = table_of(tables, stamps, counters, pid) if has_table else none
        res = np.int64(row[result_word])
        if op == EXECS:
            if res == 0:
                closing = [num for num, packed in fds.items() if packed & 1]
                for num in closing:
                    del fds[num]
            position += 1
            continue
        if op == OPEN or op == SOCKET or op == PAIR or op == MEMFD:  # fds made from nothing the table knows
            made = res >= 0 if op != PAIR else res == 0
            if made:
                counters[PENDING] = -1
                if op == OPEN:
                    packed = _open_entry(row, plan[nr], fds, entry_digest, entry_dir_base, paths, key_entry,
                                         key_meta, arena, counters, args_word, slot_len_at, data_at, slot_size)
                else:
                    packed = _created_entry(row, plan[nr], op, entry_digest, entry_dir_base, paths, key_entry,
                                            key_meta, arena, counters, args_word, slot_len_at, data_at, slot_size)
                if packed == -3:
                    return position, FULL
                _name_later(counters, naming_key)
                if not has_table:
                    fds, has_table = table_of(tables, stamps, counters, pid), True
                if op != PAIR:
                    _store(fds, max_fds, counters, res, packed)
                elif plan[nr, FDS_SLOT] >= 0 and _slot_length(row, slot_len_at, data_at, slot_size,
                                                              plan[nr, FDS_SLOT]) == 8:
                    pair = row[(data_at + plan[nr, FDS_SLOT] * slot_size) // 8]  # two int32s
                    _store(fds, max_fds, counters, _int32(pair), packed)
                    _store(fds, max_fds, counters, _int32(pair >> np.uint64(32)), packed)
            position += 1
            continue
        number = _int32(row[args_word + plan[nr, FD_ARG]])
        if op == CLOSE and res != -_EBADF:  # close releases the fd even when it fails otherwise
            current = fds.pop(number, -1)
        else:
            current = fds[number] if number in fds else -1
        noted, noted_packed = number, current
        if op >= BIND and current >= 0:  # a socket's new state: an entry derived from its last
            if res >= 0 if op == ACCEPT else res == 0 or (op == CONNECT and res == -_EINPROGRESS):
                counters[PENDING] = -1
                entry = _derived_entry(row, plan[nr], op, current >> 1, entry_digest, entry_dir_base, paths,
                                       key_entry, key_meta, arena, counters, slot_len_at, data_at, slot_size)
                if entry == -3:
                    return position, FULL
                _name_later(counters, naming_key)
                cloexec = current & 1
                if op == ACCEPT:  # a new fd, of the connection
                    noted = res
                    cloexec = 1 if plan[nr, FLAGS_ARG] >= 0 and \
                        row[args_word + plan[nr, FLAGS_ARG]] & np.uint64(_SOCK_CLOEXEC) else 0
                noted_packed = entry * 2 + cloexec
                _store(fds, max_fds, counters, noted, noted_packed)
        elif op != CLOSE and op < SOCKET and res >= 0 and current >= 0:  # a dup
            cloexec = 0
            if op == DUP3 and row[args_word + plan[nr, FLAGS_ARG]] & np.uint64(_O_CLOEXEC):
                cloexec = 1
            if op == FCNTL and _int32(row[args_word + plan[nr, CMD_ARG]]) == _F_DUPFD_CLOEXEC:
                cloexec = 1
            noted, noted_packed = res, (current & ~np.int64(1)) | cloexec
            _store(fds, max_fds, counters, res, noted_packed)  # current >= 0: the process has a table
        if noted_packed >= 0:
            k = counters[NOTES]
            note_tid[k] = words.field(row, fields[TID])
            note_time[k] = words.field(row, fields[KTIME])
            note_num[k], note_packed[k] = noted, noted_packed
            note_digest_out[k] = note_digest(entry_digest, noted, noted_packed)
            counters[NOTES] += 1
        position += 1
    return position, DONE


_LOW_ONES, _HIGH_BITS = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)


@numba.njit(cache=True, nogil=True, inline="always")
def _first_bytes(word, count):
    """A word's first `count` bytes (all of it from 8), the rest zero."""
    return word if count >= 8 else word & ((np.uint64(1) << np.uint64(8 * count)) - np.uint64(1))


@numba.njit(cache=True, nogil=True)
def _open_entry(row, plan, fds, entry_digest, entry_dir_base, paths, key_entry, key_meta, arena, counters, args_word,
                slot_len_at, data_at, slot_size):
    """A successful open's packed entry, by its path (see _keyed_entry; -3: no room)."""
    if plan[FLAGS_ARG] >= 0:
        flags = np.int64(row[args_word + plan[FLAGS_ARG]] & np.uint64(0xFFFFFFFF))
    elif plan[HOW_SLOT] >= 0:  # openat2: the first u64 of struct open_how
        length = _slot_length(row, slot_len_at, data_at, slot_size, plan[HOW_SLOT])
        flags = np.int64(_first_bytes(row[(data_at + plan[HOW_SLOT] * slot_size) // 8], length))
    else:
        flags = plan[FIXED_FLAGS]
    directory = 1 if flags & _O_DIRECTORY else 0
    first = (data_at + plan[NAME_SLOT] * slot_size) // 8
    length = _c_string_length(row, first, _slot_length(row, slot_len_at, data_at, slot_size, plan[NAME_SLOT]))
    base = -1
    if plan[DIRFD_ARG] >= 0 and not (length and row[first] & np.uint64(0xFF) == np.uint64(_SLASH)):
        dirfd = _int32(row[args_word + plan[DIRFD_ARG]])
        if dirfd in fds and entry_dir_base[fds[dirfd] >> 1]:
            base = fds[dirfd] >> 1
    entry = _keyed_entry(PATH, base, directory, row, first, length, entry_digest, entry_dir_base, paths, key_entry,
                         key_meta, arena, counters)
    return entry if entry < 0 else entry * 2 + (1 if flags & _O_CLOEXEC else 0)


@numba.njit(cache=True, nogil=True, inline="always")
def _c_string_length(row, first, read):
    """The bytes before the first NUL of `read` bytes from word `first` (a C string:
    what follows its NUL is stale)."""
    for w in range((read + 7) // 8):
        word = _first_bytes(row[first + w], read - 8 * w)
        zero = (word - _LOW_ONES) & ~word & _HIGH_BITS  # the lowest set 0x80 marks the first zero byte
        if zero:
            at = 0
            while not (zero >> np.uint64(8 * at)) & np.uint64(0x80):
                at += 1
            return min(read, 8 * w + at)
    return read


@numba.njit(cache=True, nogil=True)
def _created_entry(row, plan, op, entry_digest, entry_dir_base, paths, key_entry, key_meta, arena, counters,
                   args_word, slot_len_at, data_at, slot_size):
    """A new socket's, pipe's or memfd's packed entry (-3: no room)."""
    kind, extra, first, length, cloexec = op, np.int64(0), np.int64(0), np.int64(0), 0
    if plan[DOMAIN_ARG] >= 0:  # socket, socketpair
        kind = SOCKET
        socktype = _int32(row[args_word + plan[TYPE_ARG]])
        extra = (_int32(row[args_word + plan[DOMAIN_ARG]]) << 16) | (socktype & 0xF)
        cloexec = 1 if socktype & _SOCK_CLOEXEC else 0
    elif op == MEMFD:
        first = (data_at + plan[NAME_SLOT] * slot_size) // 8
        length = _c_string_length(row, first, _slot_length(row, slot_len_at, data_at, slot_size, plan[NAME_SLOT]))
        cloexec = 1 if row[args_word + plan[FLAGS_ARG]] & np.uint64(_MFD_CLOEXEC) else 0
    elif plan[FLAGS_ARG] >= 0:  # pipe2
        cloexec = 1 if row[args_word + plan[FLAGS_ARG]] & np.uint64(_O_CLOEXEC) else 0
    entry = _keyed_entry(kind, -1, extra, row, first, length, entry_digest, entry_dir_base, paths, key_entry,
                         key_meta, arena, counters)
    return entry if entry < 0 else entry * 2 + cloexec


@numba.njit(cache=True, nogil=True)
def _derived_entry(row, plan, op, base, entry_digest, entry_dir_base, paths, key_entry, key_meta, arena, counters,
                   slot_len_at, data_at, slot_size):
    """The entry of a socket (entry `base`) once bound, connected, listening or accepted
    from: keyed by its address's bytes as the kernel saw them (-3: no room)."""
    first, length = np.int64(0), np.int64(0)
    if plan[ADDR_SLOT] >= 0:
        first = (data_at + plan[ADDR_SLOT] * slot_size) // 8
        length = _slot_length(row, slot_len_at, data_at, slot_size, plan[ADDR_SLOT])
    return _keyed_entry(op, base, 0, row, first, length, entry_digest, entry_dir_base, paths, key_entry, key_meta,
                        arena, counters)


@numba.njit(cache=True, nogil=True)
def _keyed_entry(kind, base, extra, row, first, length, entry_digest, entry_dir_base, paths, key_entry, key_meta,
                 arena, counters):
    """The entry of a key: its kind, base entry, extra number and `length` bytes of the row
    from word `first`. A key not seen before gets a new entry, its key left in
    counters[PENDING] for Python to name it after the walk; one that hashes like another's
    gets its own entry, and the cache keeps the first. -3: no room for a new key or entry.
    The bytes are hashed and compared a word at a time (slots are 8-aligned)."""
    count = (length + 7) // 8
    h = words.mix(words.mix(words.mix(words.mix(np.uint64(0x9A7), np.uint64(kind)), np.uint64(base + 1)),
                            np.uint64(extra)), np.uint64(length))
    for w in range(count):
        h = words.mix(h, _first_bytes(row[first + w], length - 8 * w))
    cached = h in paths
    if cached:
        k = paths[h]
        same = key_meta[k, KEY_LENGTH] == length and key_meta[k, KEY_BASE] == base and \
            key_meta[k, KEY_KIND] == kind and key_meta[k, KEY_EXTRA] == extra
        offset = key_meta[k, KEY_OFFSET]
        w = 0
        while same and w < count:
            same = arena[offset + w] == _first_bytes(row[first + w], length - 8 * w)
            w += 1
        if same:
            return key_entry[k]
    if counters[KEYS] >= key_entry.shape[0] or counters[ARENA] + count > arena.shape[0] or \
            counters[NEXT] >= entry_digest.shape[0]:
        return -3
    k = counters[KEYS]
    offset = counters[ARENA]
    for w in range(count):
        arena[offset + w] = _first_bytes(row[first + w], length - 8 * w)
    key_meta[k, KEY_OFFSET], key_meta[k, KEY_LENGTH] = offset, length
    key_meta[k, KEY_BASE], key_meta[k, KEY_KIND], key_meta[k, KEY_EXTRA] = base, kind, extra
    entry = counters[NEXT]
    counters[NEXT] += 1
    key_entry[k] = entry
    # The entry's digest, of what its description is made from: the key, and its base's.
    entry_digest[entry] = words.mix(h, entry_digest[base] if base >= 0 else np.uint64(0))
    entry_dir_base[entry] = kind == PATH and extra == 1  # named in Python: a name that is not text is no base there
    if not cached:
        paths[h] = k
    counters[KEYS] += 1
    counters[ARENA] += count
    counters[PENDING] = k
    return entry


@numba.njit(cache=True, nogil=True, inline="always")
def _name_later(counters, naming_key):
    """The key of the entry just made, if one was, for Python to name after the walk."""
    if counters[PENDING] >= 0:
        naming_key[counters[NAMING]] = counters[PENDING]
        counters[NAMING] += 1


@numba.njit(cache=True, nogil=True)
def evict(tables, stamps, keep):
    """The least recently written tables dropped, down to `keep` of them."""
    count = len(stamps)
    if count <= keep:
        return
    pids = np.empty(count, np.int64)
    times = np.empty(count, np.int64)
    i = 0
    for pid, written in stamps.items():
        pids[i], times[i] = pid, written
        i += 1
    for k in np.argsort(times)[:count - keep]:
        del tables[pids[k]]
        del stamps[pids[k]]


@numba.njit(cache=True, nogil=True)
def referenced(tables, count):
    """Which of `count` entries some fd names."""
    used = np.zeros(count, np.bool_)
    for fds in tables.values():
        for packed in fds.values():
            used[packed >> 1] = True
    return used


@numba.njit(cache=True, nogil=True)
def renumber(tables, new_ids):
    """Entry ids renumbered (new_ids[old id])."""
    for fds in tables.values():
        nums = np.empty(len(fds), np.int64)
        i = 0
        for num in fds.keys():
            nums[i] = num
            i += 1
        for num in nums:
            packed = fds[num]
            fds[num] = new_ids[packed >> 1] * 2 + (packed & 1)

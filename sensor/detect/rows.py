"""A batch's syscall events as the rule engine reads them: straight from the drained
numpy rows, without a record per event.

A field's value is a function of one part of an event (fields.Field.part): its `evt`
(the syscall, its decoded arguments and result, and the fd note), its `proc` (the
thread, its user and the process table's entry) or its `container` (the cgroup). So
each row gets one 64-bit key per part, hashed in Numba from exactly the bytes that part
is decoded from, and the engine reads a field once per distinct key, from the record of
one row that has it (made on demand, as records always are). Pointer
arguments, which records do not carry, are left out of the key; a successful exec's
`proc` key includes its `evt` key, since the new image's exe and cmdline come from it.

A `container` key also takes in what the cgroup table's entry (a container's identity
is filled in in place when it is known) and the user names read in its root looked
like, and a `proc` key takes in its `container` key and what the process table's
entries it is read from looked like: RowMaker gives each row a version of them. So
every key holds for good. Distinct contents hash alike with a probability of about
n^2 / 2^65 for n distinct keys.
"""

from __future__ import annotations

import numba
import numpy as np

from sensor.detect import slots
from sensor.kernel import layout, words
from sensor.identity.fds import FdNotes
from sensor.records import Record
from sensor.kernel.syscalls import EXEC, SyscallTable

PARTS = ("evt", "proc", "container")
# Fields each part is hashed from, a whole number of 8-byte words per group (checked
# against events.h at start-up); the arguments and data slots are added per syscall.
_EVT_WORDS = (("nr", "truncated", "flags"), ("result",))
_PROC_WORDS = (("pid", "tid"), ("ppid", "uid"), ("gid",), ("comm",))
_CONTAINER_WORDS = (("cgroup_id",),)


class Decoding:
    """What the keys are hashed from, derived from events.h's layout and the syscall
    table: per syscall number, the argument registers (a bit each) and the data slots
    (a bit each) its `evt` is decoded from; and the words each part reads."""

    def __init__(self, table: SyscallTable):
        size = max(table.by_nr) + 1
        self.args = np.zeros(size, np.uint8)
        self.slots = np.zeros(size, np.uint8)
        for nr, syscall in table.by_nr.items():
            for index in syscall.numbers():
                self.args[nr] |= 1 << index
            for slot, _, _ in syscall.slots():
                self.slots[nr] |= 1 << slot
        self.execs = np.array([table.numbers[name] for name in EXEC if name in table.numbers], np.int64)
        events = layout.events()
        dtype = events.structs["mayfly_syscall_event"]
        hdr_at, hdr = dtype.fields["hdr"][1], dtype.fields["hdr"][0]
        self.evt_words = words.groups(dtype, 0, _EVT_WORDS)
        self.proc_words = words.groups(hdr, hdr_at, _PROC_WORDS)
        self.container_words = words.groups(hdr, hdr_at, _CONTAINER_WORDS)
        self.args_word = words.word(dtype, "args")
        self.data_word = words.word(dtype, "data")
        self.slot_len_at = dtype.fields["slot_len"][1]  # slot i's length: a u16 at slot_len_at + 2 i
        if dtype.fields["slot_len"][0].base.itemsize != 2:
            raise layout.LayoutError("slot_len: the rule engine reads it as u16s")
        self.arg_count = dtype.fields["args"][0].shape[0]
        self.slot_count = events.constants["MAYFLY_STR_SLOTS"]
        self.slot_size = events.constants["MAYFLY_STR_LEN"]
        self.nr, self.flags = words.in_word(dtype, "nr"), words.in_word(dtype, "flags")
        self.result_word = words.word(dtype, "result")
        self.no_result = events.constants["MAYFLY_SYSCALL_NO_RESULT"]


class Notes:
    """A batch's fd notes (FdTable.apply) as arrays: their threads, kernel times (in
    time order) and hashes, and a table from kernel time to the first note of it."""

    def __init__(self, notes: FdNotes):
        self.notes = notes
        self.tid, self.ktime, self.digest = notes.tids, notes.times, notes.digests
        if np.any(self.ktime[1:] < self.ktime[:-1]):
            raise ValueError("fd notes must come in time order, as FdTable.apply gives them")
        # Inserted last to first: the first of a kernel time wins.
        self.by_time = slots.new(len(notes))
        last_first = np.arange(len(notes))[::-1].copy()
        slots.insert(self.by_time, self.ktime[last_first], last_first, np.zeros((len(notes), 0), np.uint64))


class Rows:
    """The rows `index` of one array of syscall events (as Splitter.split gives them):
    `n` of them, their part keys (`keys[part]`, uint64 per row), and each one's record,
    made on demand (`record(k)`: the k-th of them)."""

    def __init__(self, events: np.ndarray, index: np.ndarray, decoding: Decoding, notes: Notes, make_record,
                 proc_versions: np.ndarray, container_versions: np.ndarray):
        self.events = np.ascontiguousarray(events)
        self.index = index
        self.n = len(index)
        self.notes = notes
        self._make_record = make_record  # (event, fd notes) -> Record
        self._records: dict[int, Record] = {}
        raw = words.as_words(self.events)
        hdr = self.events["hdr"]
        noted = _noted(hdr["ktime_ns"], hdr["tid"], index, notes.ktime, notes.tid, notes.digest, notes.by_time)
        d = decoding
        evt, proc, container = _keys(raw, index, d.evt_words, d.proc_words, d.container_words, d.args_word,
                                     d.arg_count, d.args, d.data_word, d.slot_len_at, d.slot_count, d.slot_size,
                                     d.slots, d.nr, d.flags, d.result_word, d.execs, d.no_result, noted,
                                     proc_versions, container_versions)
        self.keys = {"evt": evt, "proc": proc, "container": container}

    def record(self, k: int) -> Record:
        record = self._records.get(k)
        if record is None:
            record = self._records[k] = self._make_record(self.events[self.index[k]], self.notes.notes)
        return record


def chosen(events: np.ndarray, decoding: Decoding, wanted: np.ndarray) -> np.ndarray:
    """The rows of events whose syscall number is wanted (a bool per number)."""
    return _chosen(words.as_words(events), decoding.nr, wanted)


@numba.njit(cache=True, nogil=True)
def _chosen(raw, nr_field, wanted):
    index = np.empty(raw.shape[0], np.int64)
    count = 0
    for i in range(raw.shape[0]):
        nr = words.field(raw[i], nr_field)
        if nr < wanted.shape[0] and wanted[nr]:
            index[count] = i
            count += 1
    return index[:count]


@numba.njit(cache=True, nogil=True)
def _noted(ktime, tid, index, note_ktime, note_tid, note_digest, by_time):
    """The hash of each of the rows' note, found by kernel time and thread (0: none;
    of two notes of one thread and time, the last, as FdNotes.get gives)."""
    noted = np.zeros(index.shape[0], np.uint64)
    for k in range(index.shape[0]):
        i = index[k]
        at = slots.value(by_time, slots.find(by_time, ktime[i]))
        while 0 <= at < note_ktime.shape[0] and note_ktime[at] == ktime[i]:
            if note_tid[at] == tid[i]:
                noted[k] = note_digest[at]
            at += 1
    return noted


@numba.njit(cache=True, nogil=True)
def _keys(raw, index, evt_words, proc_words, container_words, args_word, arg_count, arg_mask, data_word, slot_len_at,
          slot_count, slot_size, slot_mask, nr_field, flags_field, result_word, execs, no_result, noted, proc_versions,
          container_versions):
    n, width = index.shape[0], raw.shape[1] * 8
    evt = np.empty(n, np.uint64)
    proc = np.empty(n, np.uint64)
    container = np.empty(n, np.uint64)
    for i in range(n):
        row = raw[index[i]]
        nr = np.int64(words.field(row, nr_field))
        h = np.uint64(0x51ED27)
        for w in range(evt_words.shape[0]):
            h = words.mix(h, row[evt_words[w, 0]] & evt_words[w, 1])
        args = arg_mask[nr] if nr < arg_mask.shape[0] else 0
        for a in range(arg_count):
            if args & (1 << a):
                h = words.mix(h, row[args_word + a])
        slots = slot_mask[nr] if nr < slot_mask.shape[0] else 0
        for s in range(slot_count):
            if not slots & (1 << s):
                continue
            byte = slot_len_at + 2 * s
            length = np.int64((row[byte // 8] >> np.uint64(8 * (byte % 8))) & np.uint64(0xFFFF))
            start = data_word * 8 + s * slot_size
            # Only the bytes read into the slot: the rest is whatever the ring held.
            length = min(length, max(width - start, 0))
            h = words.mix(h, np.uint64(length))
            for w in range(length // 8):
                h = words.mix(h, row[start // 8 + w])
            tail = length % 8
            if tail:
                h = words.mix(h, row[start // 8 + length // 8] & ((np.uint64(1) << np.uint64(8 * tail)) - np.uint64(1)))
        evt[i] = words.mix(h, noted[i])
        c = words.mix(np.uint64(0xC0FFEE), container_versions[i])
        for w in range(container_words.shape[0]):
            c = words.mix(c, row[container_words[w, 0]] & container_words[w, 1])
        container[i] = c
        p = words.mix(c, proc_versions[i])
        for w in range(proc_words.shape[0]):
            p = words.mix(p, row[proc_words[w, 0]] & proc_words[w, 1])
        # A successful exec's new exe and cmdline come from its evt.
        if row[result_word] == 0 and not words.field(row, flags_field) & np.uint64(no_result):
            for e in execs:
                if nr == e:
                    p = words.mix(p, evt[i])
        proc[i] = p
    return evt, proc, container


class RowMaker:
    """A batch's syscall arrays as Rows for the engine. Each row's keys take in a version
    of what its `proc` and `container` are read from beyond its bytes (the process and
    cgroup tables' entries, and the user names read in the container's root)."""

    def __init__(self, table: SyscallTable, cgroups, processes, users, make_record):
        self.table = table
        self.cgroups = cgroups
        self.processes = processes
        self.users = users
        self.make_record = make_record  # (event, fd notes) -> Record
        self.decoding = Decoding(table)
        # The hashing compiled (or loaded from Numba's cache) now, not at the first batch:
        # for one row and for more, as one row's fields are contiguous and more rows' are
        # strided views, which compiled code takes as different types.
        for count in (1, 2):
            syscalls = np.zeros(count, layout.events().structs["mayfly_syscall_event"])
            Rows(syscalls, chosen(syscalls, self.decoding, np.zeros(1, np.bool_)), self.decoding, Notes(FdNotes()),
                 make_record, np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        slots.unique_inverse(np.zeros(0, np.uint64))

    def rows(self, groups: list[np.ndarray], fds: FdNotes, nrs: np.ndarray | None = None) -> list[Rows]:
        """Syscall arrays as the rule engine reads them, the rows of syscall numbers `nrs`
        only (None: all); a row's record is made only when the engine needs it. `fds`:
        what the fd an event names was then (FdTable.apply)."""
        notes = Notes(fds)
        wanted = np.zeros(max(self.table.by_nr) + 1, np.bool_)
        wanted[np.arange(len(wanted)) if nrs is None else nrs] = True
        index = [chosen(events, self.decoding, wanted) for events in groups]
        procs, containers = self._versions([events["hdr"]["pid"][rows] for events, rows in zip(groups, index)],
                                           [events["hdr"]["cgroup_id"][rows] for events, rows in zip(groups, index)])
        return [Rows(events, selected, self.decoding, notes, self.make_record, proc, container)
                for events, selected, proc, container in zip(groups, index, procs, containers) if len(selected)]

    def _versions(self, pids: list[np.ndarray], cgroups: list[np.ndarray]) -> tuple[list, list]:
        """Per event (of each array, by its pid and cgroup id), what its `proc` and its
        `container` depend on beyond its own bytes, as numbers that change when they do:
        for `proc`, the process table's entries for it and its ancestors; for
        `container`, the cgroup table's entry and the user names read in the container's
        root (a `proc` key takes in its `container` key)."""
        at = np.cumsum([len(p) for p in pids])[:-1]
        unique, inverse = slots.unique_inverse(np.concatenate(pids or [np.zeros(0, np.uint32)]))
        procs = self.processes.versions(unique)[inverse]
        containers = _per_distinct(np.concatenate(cgroups or [np.zeros(0, np.uint64)]), self._container_version)
        return np.split(procs, at), np.split(containers, at)

    def _container_version(self, cgroup_id: int) -> int:
        return hash((self.cgroups.version(cgroup_id), self.users.version(self.cgroups.container(cgroup_id)["id"])))


def _per_distinct(values: np.ndarray, version_of) -> np.ndarray:
    """version_of(value) for each of values, called once per distinct value, as uint64."""
    unique, inverse = slots.unique_inverse(values)
    return np.array([version_of(v) for v in unique.tolist()], np.int64).view(np.uint64)[inverse]

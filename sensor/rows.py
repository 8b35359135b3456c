"""A batch's syscall events as the rule engine reads them: straight from the drained
numpy rows, without a record per event.

A field's value is a function of one part of an event (fields.Field.part): its `evt`
(the syscall, its decoded arguments and result, and the fd note), its `proc` (the
thread, its user and the process table's entry) or its `container` (the cgroup). So
each row gets one 64-bit key per part, hashed in Numba from exactly the bytes that part
is decoded from, and the engine reads a field once per distinct key, from the record of
one row that has it (made on demand by the decoder, as records always are). Pointer
arguments, which records do not carry, are left out of the key; a successful exec's
`proc` key includes its `evt` key, since the new image's exe and cmdline come from it.

A `proc` key also takes in what the process table and the user names it is read
from looked like (Decoder gives each row a version of them), so that `evt` and `proc`
keys hold for good; `container` keys hold for one batch (a container's identity is
filled in in place when it is known). Distinct contents hash alike with a
probability of about n^2 / 2^65 for n distinct keys.
"""

from __future__ import annotations

import numba
import numpy as np

from sensor import layout
from sensor.records import Record
from sensor.syscalls import EXEC, SyscallTable

PARTS = ("evt", "proc", "container")
_DECODED_AS_NUMBERS = ("fd", "int", "uint", "u64")  # the argument kinds decode_args keeps


class Decoding:
    """Per syscall number, what its `evt` is decoded from: which argument registers
    (a bit each) and which data slots (a bit each)."""

    def __init__(self, table: SyscallTable):
        size = max(table.by_nr) + 1
        self.args = np.zeros(size, np.uint8)
        self.slots = np.zeros(size, np.uint8)
        for nr, syscall in table.by_nr.items():
            slotted = {index: slot for slot, index, _ in syscall.slots()}
            for index, (_, kind) in enumerate(syscall.args):
                if index in slotted:
                    self.slots[nr] |= 1 << slotted[index]
                elif kind in _DECODED_AS_NUMBERS:
                    self.args[nr] |= 1 << index
        self.execs = np.array([table.numbers[name] for name in EXEC if name in table.numbers], np.int64)
        dtype = layout.events().structs["mayfly_syscall_event"]
        hdr = dtype.fields["hdr"][0]
        # Byte offsets; whole words are read at all but slot_len's (checked: a changed
        # events.h fails here, not silently).
        self.offsets = np.array([dtype.fields[name][1] for name in
                                 ("nr", "slot_len", "result", "args", "data")]
                                + [hdr.fields[name][1] for name in ("cgroup_id", "pid", "ppid", "gid", "comm")],
                                np.int64)
        if any(o % 8 for i, o in enumerate(self.offsets) if i != 1):
            raise layout.LayoutError("mayfly_syscall_event: a field the rule engine hashes is not 8-aligned")
        self.slot_len = layout.events().constants["MAYFLY_STR_LEN"]
        self.no_result = layout.events().constants["MAYFLY_SYSCALL_NO_RESULT"]


class Notes:
    """A batch's fd notes (FdTable.apply: by thread and kernel time), sorted by time;
    a note's content is hashed only when a row the engine reads has it."""

    def __init__(self, notes: dict[tuple[int, int], dict]):
        self.notes = notes
        self._order = sorted(notes, key=lambda key: key[1])
        self.ktime = np.array([key[1] for key in self._order], np.uint64)
        self.tid = np.array([key[0] for key in self._order], np.uint32)
        self._hashes: dict[int, int] = {}

    def hashes(self, found: np.ndarray) -> np.ndarray:
        """The content hash of each note found (an index here; -1: none, hash 0)."""
        out = np.zeros(len(found), np.uint64)
        for i in np.flatnonzero(found >= 0).tolist():
            at = int(found[i])
            known = self._hashes.get(at)
            if known is None:
                known = self._hashes[at] = _content_hash(self.notes[self._order[at]])
            out[i] = known
        return out


class Rows:
    """One array of syscall events (as Decoder.split gives them): `n`, the part keys
    (`keys[part]`, uint64 per row), and each row's record, made on demand."""

    def __init__(self, events: np.ndarray, decoding: Decoding, notes: Notes, make_record, proc_versions: np.ndarray):
        self.events = np.ascontiguousarray(events)
        self.n = len(self.events)
        self.notes = notes
        self._make_record = make_record  # (event, fd notes) -> Record
        self._records: dict[int, Record] = {}
        words = self.events.view(np.uint64).reshape(self.n, self.events.dtype.itemsize // 8)
        noted = notes.hashes(_noted(self.events["hdr"]["ktime_ns"], self.events["hdr"]["tid"], notes.ktime, notes.tid))
        evt, proc, container = _keys(words, self.events.dtype.itemsize, decoding.offsets, decoding.args,
                                     decoding.slots, decoding.execs, decoding.slot_len, decoding.no_result, noted,
                                     proc_versions)
        self.keys = {"evt": evt, "proc": proc, "container": container}

    def record(self, i: int) -> Record:
        record = self._records.get(i)
        if record is None:
            record = self._records[i] = self._make_record(self.events[i], self.notes.notes)
        return record


def _content_hash(note: dict) -> int:
    """A hash of an fd note's content (a file's is flat; a socket's holds addresses,
    dicts of numbers and strings)."""
    try:
        return hash(tuple((k, tuple(v.items()) if isinstance(v, dict) else v) for k, v in note.items())) \
            & 0xFFFFFFFFFFFFFFFF
    except TypeError:
        return hash(_frozen(note)) & 0xFFFFFFFFFFFFFFFF


def _frozen(value):
    """A hashable stand-in with the same content (dicts and lists become tuples)."""
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *map(_frozen, value))
    return value


@numba.njit(cache=True, nogil=True)
def _noted(ktime, tid, note_ktime, note_tid):
    """Each row's note (its index; -1: none), by kernel time and thread."""
    noted = np.full(ktime.shape[0], -1, np.int64)
    if note_ktime.shape[0] == 0:
        return noted
    for i in range(ktime.shape[0]):
        at = np.searchsorted(note_ktime, ktime[i])
        while at < note_ktime.shape[0] and note_ktime[at] == ktime[i]:
            if note_tid[at] == tid[i]:
                noted[i] = at
                break
            at += 1
    return noted


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(h, value):
    h = (h ^ value) * np.uint64(0x9E3779B97F4A7C15)
    return h ^ (h >> np.uint64(29))


@numba.njit(cache=True, nogil=True)
def _keys(words, width, offsets, arg_mask, slot_mask, execs, slot_len, no_result, noted, proc_versions):
    n = words.shape[0]
    evt = np.empty(n, np.uint64)
    proc = np.empty(n, np.uint64)
    container = np.empty(n, np.uint64)
    nr_at, slot_len_at, result_at, args_at, data_at = offsets[0], offsets[1], offsets[2], offsets[3], offsets[4]
    cgroup_at, pid_at, ppid_at, gid_at, comm_at = offsets[5], offsets[6], offsets[7], offsets[8], offsets[9]
    low32 = np.uint64(0xFFFFFFFF)
    for i in range(n):
        row = words[i]
        head = row[nr_at // 8]  # nr, truncated, flags
        nr = np.int64(head & low32)
        h = _mix(np.uint64(0x51ED27), head)
        h = _mix(h, np.uint64(row[result_at // 8]))
        args = arg_mask[nr] if nr < arg_mask.shape[0] else 0
        slots = slot_mask[nr] if nr < slot_mask.shape[0] else 0
        for a in range(6):
            if args & (1 << a):
                h = _mix(h, row[args_at // 8 + a])
        for s in range(3):
            if not slots & (1 << s):
                continue
            byte = slot_len_at + 2 * s
            length = np.int64((row[byte // 8] >> np.uint64(8 * (byte % 8))) & np.uint64(0xFFFF))
            start = data_at + s * slot_len
            length = min(length, max(width - start, 0))
            h = _mix(h, np.uint64(length))
            for w in range(length // 8):
                h = _mix(h, row[start // 8 + w])
            tail = length % 8
            if tail:
                h = _mix(h, row[start // 8 + length // 8] & ((np.uint64(1) << np.uint64(8 * tail)) - np.uint64(1)))
        h = _mix(h, noted[i])
        evt[i] = h
        c = _mix(np.uint64(0xC0FFEE), row[cgroup_at // 8])
        container[i] = c
        p = _mix(c, row[pid_at // 8])                # pid, tid
        p = _mix(p, row[ppid_at // 8])               # ppid, uid
        p = _mix(p, row[gid_at // 8] & low32)        # gid (not the padding after it)
        p = _mix(p, row[comm_at // 8])
        p = _mix(p, row[comm_at // 8 + 1])
        p = _mix(p, proc_versions[i])
        flags = (head >> np.uint64(48)) & np.uint64(0xFFFF)
        for e in execs:
            if nr == e and row[result_at // 8] == 0 and not flags & np.uint64(no_result):
                p = _mix(p, h)
        proc[i] = p
    return evt, proc, container

"""Turn drained ring-buffer batches into numpy arrays per event kind, and those into
`event` records (only for the events asked for: records are the slow path)."""

from __future__ import annotations

import ipaddress
import socket
import time

import numpy as np

from sensor import records
from sensor.kernel import layout
from sensor.detect.slots import unique_inverse
from sensor.kernel.batches import each
from sensor.identity.cgroups import CgroupTable
from sensor.identity.fds import FdNotes
from sensor.identity.processes import ProcessTable
from sensor.records import Record, c_string, cmdline
from sensor.kernel.ringbuf import RawBatch, group, scatter
from sensor.detect.rows import Decoding, Notes, Rows, chosen
from sensor.kernel.syscalls import EXEC, SyscallTable
from sensor.identity.users import Users

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
# evt.type of the events that are not syscalls.
OTHER_TYPES = ("fork", "procexit", "cgroup_mkdir", "cgroup_rmdir", "tcp_state")


class MonotonicClock:
    """Converts bpf_ktime_get_ns() (CLOCK_MONOTONIC) to ns since the epoch."""

    def __init__(self):
        self.offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def to_epoch(self, ktime_ns: int) -> int:
        return int(ktime_ns) + self.offset

    def now(self) -> int:
        return self.to_epoch(time.clock_gettime_ns(time.CLOCK_MONOTONIC))


def family_name(family: int) -> str:
    return "inet" if family == socket.AF_INET else "inet6"


def ip_text(family: int, raw: np.ndarray) -> str:
    """An address from a 16-byte field (AF_INET in its first 4 bytes)."""
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    return str(ipaddress.IPv6Address(bytes(raw)))


def _per_distinct(values: np.ndarray, version_of) -> np.ndarray:
    """version_of(value) for each of values, called once per distinct value, as uint64."""
    unique, inverse = unique_inverse(values)
    return np.array([version_of(v) for v in unique.tolist()], np.int64).view(np.uint64)[inverse]


class Decoder:
    def __init__(self, table: SyscallTable, cgroups: CgroupTable, processes: ProcessTable | None = None,
                 clock: MonotonicClock | None = None, events: layout.Layout | None = None, users: Users | None = None):
        self.table = table
        self.cgroups = cgroups
        self.clock = clock or MonotonicClock()
        self.processes = processes or ProcessTable(table, self.clock)
        self.users = users or Users()
        self.layout = events or layout.events()
        self.kinds = self.layout.kinds()
        self._dtypes = {number: self.layout.structs[f"mayfly_{name}_event"] for number, name in self.kinds.items()}
        self._mkdir = self.layout.constants["MAYFLY_CGROUP_MKDIR"]
        self._decoding = Decoding(table)
        # The rule engine's hashing compiled (or loaded from Numba's cache) now, not at
        # the first batch.
        Rows(np.zeros(0, self._dtypes[self.layout.constants["MAYFLY_EVENT_SYSCALL"]]), np.zeros(0, np.int64),
             self._decoding, Notes(FdNotes()), self.syscall_record, np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        unique_inverse(np.zeros(0, np.uint64))
        self._fd_notes = FdNotes()
        # Buffers reused by every split (its arrays are views of them): grouping keys,
        # group counts (kind x row width in 8-byte units) and the grouped rows.
        self._itemsizes = np.zeros(max(self.kinds) + 1, np.int64)
        for number, dtype in self._dtypes.items():
            self._itemsizes[number] = dtype.itemsize
        self._counts = np.zeros((self._itemsizes.size, int(self._itemsizes.max()) // 8 + 1), np.int64)
        self._row_widths = np.arange(self._counts.shape[1], dtype=np.int64)[None, :] * 8
        self._keys = np.empty(0, np.int64)
        self._rows = np.empty(0, np.uint8)

    def split(self, batch: RawBatch) -> tuple[dict[str, list[np.ndarray]], int]:
        """The batch as structured arrays per event kind, and the number of records of
        kinds this decoder does not know (a kernel/user contract mismatch).

        Records come without their unused tail, so a kind's records are grouped by
        length: each array's rows are as wide as its records (a syscall with no string
        costs 136 bytes, not 904). The arrays live in buffers this decoder reuses: they
        are valid until the next split."""
        if not len(batch):
            return {}, 0
        n = len(batch)
        if self._keys.size < n:
            self._keys = np.empty(n, np.int64)
        keys = self._keys[:n]
        group(batch.buf, batch.offsets, batch.lengths, self._itemsizes, keys, self._counts)
        sizes = self._counts * self._row_widths
        cursor = np.zeros_like(sizes)
        cursor.reshape(-1)[1:] = np.cumsum(sizes.reshape(-1))[:-1]
        total = int(sizes.sum())
        if self._rows.size < total:
            self._rows = np.empty(total, np.uint8)
        starts = cursor.copy()
        scatter(batch.buf, batch.offsets, batch.lengths, keys, cursor, self._rows)
        arrays: dict[str, list[np.ndarray]] = {}
        for kind, slot in zip(*np.nonzero(self._counts)):
            width = int(self._row_widths[0, slot])
            start = int(starts[kind, slot])
            rows = self._rows[start:start + int(sizes[kind, slot])]
            dtype = layout.truncate(self._dtypes[int(kind)], width)
            arrays.setdefault(self.kinds[int(kind)], []).append(rows.view(dtype))
        return arrays, int(np.count_nonzero(keys < 0))

    def records(self, arrays: dict[str, list[np.ndarray]], types: frozenset[str] | None,
                fds: FdNotes | None = None) -> list[Record]:
        """`event` records for the events whose evt.type is in `types` (None: all), in time
        order. `fds`: what the fd an event names was then, by (tid, kernel time)."""
        self._fd_notes = fds or FdNotes()
        wanted = None if types is None else [self.table.numbers[t] for t in types if t in self.table.numbers]
        result = []
        for kind, groups in arrays.items():
            build = getattr(self, f"_{kind}")
            for events in groups:
                if kind == "syscall":
                    if wanted is not None:
                        events = events[np.isin(events["nr"], wanted)]
                    built = map(self._syscall, events, self.table.decode_many(events))
                else:
                    built = map(build, events)
                result += [r for r in built if types is None or r["evt"]["type"] in types]
        result.sort(key=lambda r: r["ts"])
        return result

    def rows(self, groups: list[np.ndarray], fds: FdNotes, nrs: np.ndarray | None = None) -> list[Rows]:
        """Syscall arrays as the rule engine reads them, the rows of syscall numbers `nrs`
        only (None: all); a row's record is made only when the engine needs it. `fds` as
        for records()."""
        notes = Notes(fds)
        wanted = np.zeros(max(self.table.by_nr) + 1, np.bool_)
        wanted[np.arange(len(wanted)) if nrs is None else nrs] = True
        index = [chosen(events, self._decoding, wanted) for events in groups]
        procs, containers = self._versions([events["hdr"]["pid"][rows] for events, rows in zip(groups, index)],
                                           [events["hdr"]["cgroup_id"][rows] for events, rows in zip(groups, index)])
        return [Rows(events, selected, self._decoding, notes, self.syscall_record, proc, container)
                for events, selected, proc, container in zip(groups, index, procs, containers) if len(selected)]

    def _versions(self, pids: list[np.ndarray], cgroups: list[np.ndarray]) -> tuple[list, list]:
        """Per event (of each array, by its pid and cgroup id), what its `proc` and its
        `container` depend on beyond its own bytes, as numbers that change when they do:
        for `proc`, the process table's entries for it and its ancestors; for
        `container`, the cgroup table's entry and the user names read in the container's
        root (a `proc` key takes in its `container` key)."""
        at = np.cumsum([len(p) for p in pids])[:-1]
        procs = _per_distinct(np.concatenate(pids or [np.zeros(0, np.uint32)]), self.processes.version)
        containers = _per_distinct(np.concatenate(cgroups or [np.zeros(0, np.uint64)]), self._container_version)
        return np.split(procs, at), np.split(containers, at)

    def _container_version(self, cgroup_id: int) -> int:
        return hash((self.cgroups.version(cgroup_id), self.users.version(self.cgroups.container(cgroup_id)["id"])))

    def syscall_record(self, event: np.void, fds: FdNotes) -> Record:
        self._fd_notes = fds
        return self._syscall(event)

    def _record(self, header: np.void, evt: dict, **proc) -> Record:
        pid, uid, gid = int(header["pid"]), int(header["uid"]), int(header["gid"])
        container = self.cgroups.container(int(header["cgroup_id"]))
        user, group = self.users.names(container["id"], pid, uid, gid)
        names = {k: v for k, v in (("user", user), ("group", group)) if v is not None}
        return records.new("event", self.clock.to_epoch(header["ktime_ns"]), container=container,
                           proc={"pid": pid, "tid": int(header["tid"]), "ppid": int(header["ppid"]),
                                 "uid": uid, "gid": gid, **names, "comm": c_string(header["comm"]),
                                 **self.processes.get(pid), **proc},
                           evt=evt)

    def _syscall(self, event: np.void, evt: dict | None = None) -> Record:
        """`evt`: the event's arguments if decoded already (SyscallTable.decode_many)."""
        evt = self.table.decode_args(event) if evt is None else evt
        note = self._fd_notes.get(int(event["hdr"]["tid"]), int(event["hdr"]["ktime_ns"]))
        if note is not None:
            evt["fd"] = note.as_record()
        if evt["type"] in EXEC and evt["res"] == 0:
            argv = evt.get("argv", [])
            return self._record(event["hdr"], evt, exe=evt["filename"],
                                cmdline=cmdline(argv))
        return self._record(event["hdr"], evt)

    def _fork(self, event: np.void) -> Record:
        return self._record(event["hdr"], {"type": "fork", "child_pid": int(event["child_pid"]),
                                           "clone_flags": int(event["clone_flags"])})

    def _exit(self, event: np.void) -> Record:
        return self._record(event["hdr"], {"type": "procexit", "exit_code": int(event["exit_code"]),
                                           "signal": int(event["signal"])})

    def _cgroup(self, event: np.void) -> Record:
        op = "cgroup_mkdir" if event["op"] == self._mkdir else "cgroup_rmdir"
        return self._record(event["hdr"], {"type": op, "id": int(event["id"]), "path": c_string(event["path"]),
                                           "level": int(event["level"])})

    def _tcp(self, event: np.void) -> Record:
        family = int(event["family"])
        return self._record(event["hdr"], {
            "type": "tcp_state", "old": TCP_STATES.get(int(event["oldstate"]), int(event["oldstate"])),
            "new": TCP_STATES.get(int(event["newstate"]), int(event["newstate"])),
            "family": family_name(family), "saddr": ip_text(family, event["saddr"]), "sport": int(event["sport"]),
            "daddr": ip_text(family, event["daddr"]), "dport": int(event["dport"]), "sk": int(event["skaddr"])})

    def apply_cgroups(self, arrays: dict[str, list[np.ndarray]], removals: bool) -> list[tuple[int, int]]:
        """Keep the cgroup table current: new cgroups are added before a batch's records
        are made; removed ones are handed back as (id, wall-clock ns) after, so that the
        batch's own events still name them and the caller can close their books."""
        applied = []
        for event in each(arrays, "cgroup"):
            if (event["op"] != self._mkdir) == removals:
                cgroup_id, ts = int(event["id"]), self.clock.to_epoch(event["hdr"]["ktime_ns"])
                if not removals:
                    self.cgroups.made(cgroup_id, c_string(event["path"]), ts)
                applied.append((cgroup_id, ts))
        return applied

"""`event` records: a decoded batch's events as records, each with its container and
process, only for the events asked for (records are the slow path)."""

from __future__ import annotations

import ipaddress
import socket

import numpy as np

from sensor import records
from sensor.identity.cgroups import CgroupTable
from sensor.identity.fds import FdNotes
from sensor.identity.processes import ProcessTable
from sensor.identity.users import Users
from sensor.kernel.clock import MonotonicClock
from sensor.kernel.split import Arrays
from sensor.kernel.syscalls import EXEC, SyscallTable
from sensor.records import Record, c_string, cmdline

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
# evt.type of the events that are not syscalls.
OTHER_TYPES = ("fork", "procexit", "cgroup_mkdir", "cgroup_rmdir", "tcp_state")


def family_name(family: int) -> str:
    return "inet" if family == socket.AF_INET else "inet6"


def ip_text(family: int, raw: np.ndarray) -> str:
    """An address from a 16-byte field (AF_INET in its first 4 bytes)."""
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    return str(ipaddress.IPv6Address(bytes(raw)))


class EventRecords:
    def __init__(self, table: SyscallTable, cgroups: CgroupTable, processes: ProcessTable, users: Users,
                 clock: MonotonicClock, mkdir: int):
        self.table = table
        self.cgroups = cgroups
        self.processes = processes
        self.users = users
        self.clock = clock
        self._mkdir = mkdir  # MAYFLY_CGROUP_MKDIR
        self._fd_notes = FdNotes()

    def records(self, arrays: Arrays, types: frozenset[str] | None, fds: FdNotes | None = None) -> list[Record]:
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


class Selection:
    """Which events become records: those emitted (`emit_types`; None: all, when
    `emit`), and those the rules read as records (`decode_types`; None: all)."""

    def __init__(self, emit: bool = False, emit_types: frozenset[str] | None = None):
        self.emit = emit
        self.emit_types = emit_types
        self.decode_types: frozenset[str] | None = frozenset()

    def emits(self, record: Record) -> bool:
        return self.emit and (self.emit_types is None or record["evt"]["type"] in self.emit_types)

"""Raw kernel records, laid out by events.h as the ring delivers them, and the parts
that decode them and make records of them, with nothing of the host behind them: for
tests and benchmarks."""

from dataclasses import dataclass

import numpy as np

from sensor.detect.rows import RowMaker
from sensor.identity.cgroups import CgroupTable
from sensor.identity.processes import Details, ProcessTable
from sensor.identity.runtimes import Resolver
from sensor.identity.users import Users
from sensor.kernel import layout
from sensor.kernel.clock import MonotonicClock
from sensor.kernel.ringbuf import RawBatch
from sensor.kernel.split import Splitter
from sensor.kernel.syscalls import SyscallTable
from sensor.output.events import EventRecords

EVENTS = layout.events()
C = EVENTS.constants
TABLE = SyscallTable.from_headers(None)


def raw(kind: str, cgroup_id=4242, pid=100, ktime=5_000_000_000, tid=None, ppid=1, uid=0, gid=0, comm=b"sh",
        **fields) -> bytes:
    event = np.zeros(1, EVENTS.structs[f"mayfly_{kind}_event"])
    hdr = event["hdr"]
    hdr["kind"] = C[f"MAYFLY_EVENT_{kind.upper()}"]
    hdr["size"], hdr["ktime_ns"] = event.dtype.itemsize, ktime
    hdr["cgroup_id"], hdr["pid"], hdr["tid"], hdr["ppid"] = cgroup_id, pid, pid if tid is None else tid, ppid
    hdr["uid"], hdr["gid"], hdr["comm"] = uid, gid, comm
    for name, value in fields.items():
        event[name] = value
    return event.tobytes()


def batch_of(*records: bytes) -> RawBatch:
    """Records as the ring drain lays them out: 8-byte aligned, one after another."""
    padded = [r + bytes(-len(r) % 8) for r in records]
    offsets = np.cumsum([0] + [len(p) for p in padded[:-1]]).astype(np.uint64)
    # Writable, as the ring drain's copy is (compiled code takes the two as different types).
    return RawBatch(np.frombuffer(bytearray(b"".join(padded)), np.uint8), offsets,
                    np.array([len(r) for r in records], np.uint32))


@dataclass
class Parts:
    """The pipeline's decoding parts over one set of tables: split raw batches into
    arrays, make event records of them, and rows for the rule engine."""
    table: SyscallTable
    clock: MonotonicClock
    cgroups: CgroupTable
    processes: ProcessTable
    splitter: Splitter
    events: EventRecords
    row_maker: RowMaker

    def split(self, batch: RawBatch):
        return self.splitter.split(batch)

    def records(self, arrays, types, fds=None):
        return self.events.records(arrays, types, fds)

    def rows(self, groups, fds, nrs=None):
        return self.row_maker.rows(groups, fds, nrs)


def decoder(paths=None) -> Parts:
    cgroups = CgroupTable("/nonexistent", Resolver("/nonexistent"))  # no runtime state anywhere
    for cgroup_id, path in (paths or {4242: "/mayfly-abc"}).items():
        cgroups.made(cgroup_id, path, 0)
    clock = MonotonicClock()
    # The events' pids are made up: /proc/<pid> is some other process, or none.
    processes = ProcessTable(TABLE, clock, details=lambda pid: Details())
    users = Users(root_of=lambda pid: "/nonexistent")
    events = EventRecords(TABLE, cgroups, processes, users, clock, C["MAYFLY_CGROUP_MKDIR"])
    return Parts(TABLE, clock, cgroups, processes, Splitter(EVENTS), events,
                 RowMaker(TABLE, cgroups, processes, users, events.syscall_record))


def syscall(syscall_name: str, result: int = 0, pid: int = 100, ktime: int = 5_000_000_000,
            header: dict | None = None, event_flags: int = 0, **values) -> bytes:
    """A syscall record as the kernel sends it: registers in args, strings and sockaddrs
    (str or bytes values) in their slots. `header`: more of raw()'s header fields;
    `event_flags`: MAYFLY_SYSCALL_* bits."""
    spec = TABLE.syscalls[syscall_name]
    args, slot_len = [0] * 6, [0, 0, 0]
    data = np.zeros(C["MAYFLY_DATA_LEN"], np.uint8)
    slot_of = {index: slot for slot, index, _ in spec.slots()}
    for index, (arg, _) in enumerate(spec.args):
        value = values.get(arg, 0)
        if index in slot_of:
            content = value.encode() + b"\0" if isinstance(value, str) else bytes(value)
            start = slot_of[index] * C["MAYFLY_STR_LEN"]
            data[start:start + len(content)] = np.frombuffer(content, np.uint8)
            slot_len[slot_of[index]] = len(content)
        else:
            args[index] = value & (2 ** 64 - 1)
    record = raw("syscall", pid=pid, ktime=ktime, nr=spec.nr, result=result, args=args, slot_len=slot_len, data=data,
                 flags=event_flags, **(header or {}))
    # Sent without the unused tail, as the kernel does.
    used = max((slot * C["MAYFLY_STR_LEN"] + length for slot, length in enumerate(slot_len) if length), default=0)
    return record[:EVENTS.structs["mayfly_syscall_event"].fields["data"][1] + used]


def inet(addr: str, port: int) -> bytes:
    """A struct sockaddr_in."""
    return (2).to_bytes(2, "little") + port.to_bytes(2, "big") + bytes(int(x) for x in addr.split(".")) + bytes(8)

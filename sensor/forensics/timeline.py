"""A case's timeline: the flight recorder's rows of one container decoded into `event`
records, as the sensor would have emitted them, in the capture's thread. The live
tables are the drain loop's alone, so the records name the case's container, and the
processes by what the capture read of them (exe, cmdline); file descriptors are not
named (docs/cases.md)."""

from __future__ import annotations

import time

from sensor.identity.users import Users
from sensor.kernel.clock import MonotonicClock
from sensor.kernel.split import Arrays
from sensor.kernel.syscalls import SyscallTable
from sensor.output.events import EventRecords
from sensor.records import Record, cmdline


CHUNK = 128  # events decoded between two chances for the drain loop to run


class _TheContainer:
    def __init__(self, container: dict):
        self._container = container

    def container(self, cgroup_id: int) -> dict:
        return self._container


class _Captured:
    """proc fields of the processes the capture described."""

    def __init__(self, described: list[dict]):
        self._by_pid = {d["pid"]: {**({"exe": d["exe"]} if "exe" in d else {}),
                                   **({"cmdline": cmdline(d["cmdline"])} if "cmdline" in d else {})}
                        for d in described}

    def get(self, pid: int) -> dict:
        return self._by_pid.get(pid, {})


class Timeline:
    def __init__(self, table: SyscallTable, clock: MonotonicClock, mkdir: int):
        self.table, self.clock, self.mkdir = table, clock, mkdir
        self.users = Users()

    def __call__(self, container: dict, arrays: Arrays, described: list[dict]) -> list[Record]:
        decoder = EventRecords(self.table, _TheContainer(container), _Captured(described), self.users,
                               self.clock, self.mkdir)
        found = []
        for kind, groups in arrays.items():
            for rows in groups:
                for start in range(0, len(rows), CHUNK):
                    found += decoder.records({kind: [rows[start:start + CHUNK]]}, None)
                    # Decoding is Python: let the drain loop have the interpreter between
                    # chunks, or it waits up to a switch interval (5 ms) each time it wakes.
                    time.sleep(0)
        found.sort(key=lambda record: record["ts"])
        return found

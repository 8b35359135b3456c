"""cgroup2 ids to the containers they stand for, and each container's lifecycle.

An id is the inode of the cgroup's directory. The table is filled by a scan of the
cgroup2 mount at start and kept by the kernel's cgroup_mkdir/rmdir events; identities
come from sensor.identity.runtimes, resolved when the cgroup appears, off the hot path.

A cgroup whose identity is not known yet (its runtime has not written its state) is
pending: its records are held, up to `hold_max`, and released enriched once the state
is readable, or after `deadline_s` with what is known and `resolved: false`. A
container's entry outlives its cgroup by `grace_s`, for late records.

A container may live for 20 ms, and its runtime removes its state when it ends. The
poll loop can be held up longer than that (a report, a large batch, a collection), so
`start_watching()` runs a thread that looks at pending cgroups' state every few
milliseconds on its own; the poll loop takes what it found.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from sensor import records
from sensor.log import get_logger
from sensor.records import Record
from sensor.identity.runtimes import Identity, Resolver

log = get_logger("cgroups")


class _Watcher(threading.Thread):
    """Resolves pending cgroups apart from the poll loop; thread-safe hand-over."""

    def __init__(self, resolver: Resolver, interval_s: float):
        super().__init__(name="mayfly-identity", daemon=True)
        self.resolver = resolver
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {}
        self._found: dict[int, Identity] = {}
        self._stopping = threading.Event()

    def watch(self, cgroup_id: int, path: str) -> None:
        with self._lock:
            self._paths[cgroup_id] = path

    def take(self, cgroup_id: int) -> Identity | None:
        """What was found for the cgroup, if anything; it is no longer watched."""
        with self._lock:
            self._paths.pop(cgroup_id, None)
            return self._found.pop(cgroup_id, None)

    def run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            with self._lock:
                paths = list(self._paths.items())
            for cgroup_id, path in paths:
                identity = self.resolver.resolve(path)
                if identity.resolved:
                    with self._lock:
                        if self._paths.pop(cgroup_id, None) is not None:
                            self._found[cgroup_id] = identity

    def stop(self) -> None:
        self._stopping.set()
        self.join()


@dataclass
class Entry:
    path: str
    identity: Identity
    container: dict                       # the `container` map records carry
    first_seen_ns: int
    pending_until: float | None = None    # monotonic deadline while the identity is pending
    held: list[Record] = field(default_factory=list)
    removed_ns: int | None = None
    removed_at: float | None = None       # monotonic
    events: int = 0
    processes: int = 0                    # processes that exited in it
    existing: bool = False                # already there when the sensor started
    serial: int = 0                       # new whenever `container` changes


class CgroupTable:
    def __init__(self, root: str, resolver: Resolver | None = None, deadline_s: float = 1.0, grace_s: float = 300.0,
                 hold_max: int = 4096, max_removed: int = 65536):
        self.root = root
        self.resolver = resolver or Resolver()
        self.deadline_s = deadline_s
        self.grace_s = grace_s
        self.hold_max = hold_max
        self.max_removed = max_removed
        self.entries: dict[int, Entry] = {}
        self._removed: OrderedDict[int, None] = OrderedDict()  # in removal order, for the grace period
        self._out: list[Record] = []                           # lifecycle records not yet taken
        self._pending: set[int] = set()                         # cgroups whose records are held
        self._hosts: list[int] = []                             # known to be the host's, not yet taken
        self._watcher: _Watcher | None = None
        self._serials = itertools.count(1)

    def start_watching(self, interval_s: float = 0.002) -> None:
        """Look at pending cgroups every `interval_s` from a thread of its own."""
        self._watcher = _Watcher(self.resolver, interval_s)
        for cgroup_id in self._pending:
            self._watcher.watch(cgroup_id, self.entries[cgroup_id].path)
        self._watcher.start()

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    # ---- keeping the table ----

    def scan(self, now_ns: int) -> None:
        """Every cgroup that exists now (later ones come as events). Containers found get
        `start` records with existing=True."""
        for directory, _, _ in os.walk(self.root, onerror=lambda e: log.warning("cannot scan", error=str(e))):
            relative = os.path.relpath(directory, self.root)
            try:
                cgroup_id = os.stat(directory).st_ino
            except OSError:
                continue  # removed while we walked
            self.made(cgroup_id, "/" if relative == "." else "/" + relative, now_ns, existing=True)

    def made(self, cgroup_id: int, path: str, now_ns: int, existing: bool = False) -> None:
        known = self.entries.get(cgroup_id)
        if known is not None and known.removed_ns is None:
            return  # seen by both the start-up scan and an event
        identity = self.resolver.resolve(path)
        entry = Entry(path, identity, self._container_map(cgroup_id, identity), now_ns, existing=existing,
                      serial=next(self._serials))
        self.entries[cgroup_id] = entry
        if not identity.resolved:
            entry.pending_until = time.monotonic() + self.deadline_s
            self._pending.add(cgroup_id)
            if self._watcher is not None:
                self._watcher.watch(cgroup_id, path)
        elif identity.is_container:
            self._started(entry)
        else:
            self._hosts.append(cgroup_id)

    def take_hosts(self) -> list[int]:
        """The cgroups known to be the host's since the last call."""
        hosts, self._hosts = self._hosts, []
        return hosts

    def removed(self, cgroup_id: int, now_ns: int, losses: dict[str, int]) -> None:
        """The cgroup is gone: an `exit` record for a container (after anything held for
        it), with `losses` (rate_limited, ring_full) counted in the kernel for it."""
        entry = self.entries.get(cgroup_id)
        if entry is None or entry.removed_ns is not None:
            return
        if entry.pending_until is not None:
            self._resolve(cgroup_id, entry, final=True)
        entry.removed_ns, entry.removed_at = now_ns, time.monotonic()
        self._removed[cgroup_id] = None
        if entry.identity.is_container:
            lost = sum(losses.values())
            self._out.append(records.new(
                "container", now_ns, container=entry.container, state="exit",
                lifetime_s=round((now_ns - entry.first_seen_ns) / 1e9, 6), processes=entry.processes,
                events=entry.events, lost=dict(losses), complete=lost == 0))
        while len(self._removed) > self.max_removed:
            self.entries.pop(self._removed.popitem(last=False)[0], None)

    def account(self, arrays: dict[str, list[np.ndarray]]) -> None:
        """Count a batch's events per cgroup, and the processes that exited in each."""
        for kind, groups in arrays.items():
            for events in groups:
                ids, counts = np.unique(events["hdr"]["cgroup_id"], return_counts=True)
                for cgroup_id, count in zip(ids.tolist(), counts.tolist()):
                    entry = self.entries.get(cgroup_id)
                    if entry is not None:
                        entry.events += count
                        if kind == "exit":
                            entry.processes += count

    # ---- records ----

    def container(self, cgroup_id: int) -> dict:
        entry = self.entries.get(cgroup_id)
        if entry is None:
            return {"id": f"cgroup-{cgroup_id}", "cgroup_id": cgroup_id, "resolved": False}
        return entry.container

    def directory(self, cgroup_id: int) -> str | None:
        """A known cgroup's directory, absolute; None when unknown here, and for the root
        (which holds the host: never frozen, killed or captured)."""
        entry = self.entries.get(cgroup_id)
        if entry is None or entry.path.strip("/") == "":
            return None
        return os.path.join(self.root, entry.path.lstrip("/"))

    def version(self, cgroup_id: int) -> int:
        """A number that changes whenever container(cgroup_id) may (0: no entry)."""
        entry = self.entries.get(cgroup_id)
        return entry.serial if entry is not None else 0

    def hold(self, record: Record) -> bool:
        """Keep a record of a pending cgroup until its identity is known. False when the
        record can go now."""
        container = record.get("container")
        entry = self.entries.get(container["cgroup_id"]) if container else None
        if entry is None or entry.pending_until is None:
            return False
        entry.held.append(record)
        if len(entry.held) >= self.hold_max:
            self._resolve(container["cgroup_id"], entry, final=True)
        return True

    def tick(self) -> list[Record]:
        """Retry pending identities, release what is due, drop containers past their
        grace period. Returns the lifecycle and released records, in order."""
        now = time.monotonic()
        for cgroup_id in list(self._pending):
            entry = self.entries[cgroup_id]
            self._resolve(cgroup_id, entry, final=now >= entry.pending_until)
        while self._removed:
            cgroup_id = next(iter(self._removed))
            entry = self.entries.get(cgroup_id)
            if entry is not None and now - entry.removed_at < self.grace_s:
                break
            self._removed.popitem(last=False)
            self.entries.pop(cgroup_id, None)
        return self.take()

    def flush(self) -> list[Record]:
        """At stop: release everything held, with what is known."""
        for cgroup_id in list(self._pending):
            self._resolve(cgroup_id, self.entries[cgroup_id], final=True)
        return self.take()

    def take(self) -> list[Record]:
        out, self._out = self._out, []
        return out

    @property
    def pending(self) -> int:
        """How many cgroups have records held (safe to read from another thread)."""
        return len(self._pending)

    def pending_ids(self) -> list[int]:
        """The cgroups whose records are held."""
        return list(self._pending)

    # ---- internals ----

    def _resolve(self, cgroup_id: int, entry: Entry, final: bool) -> None:
        found = self._watcher.take(cgroup_id) if self._watcher is not None else None
        identity = found or self.resolver.resolve(entry.path)
        if not identity.resolved and not final:
            if self._watcher is not None:
                self._watcher.watch(cgroup_id, entry.path)
            return
        entry.identity = identity
        entry.container.clear()  # records already made share this map
        entry.container.update(self._container_map(cgroup_id, identity))
        entry.serial = next(self._serials)
        entry.pending_until = None
        self._pending.discard(cgroup_id)
        if identity.is_container:
            self._started(entry)
        else:
            self._hosts.append(cgroup_id)
        self._out.extend(entry.held)
        entry.held = []

    def _started(self, entry: Entry) -> None:
        self._out.append(records.new("container", entry.first_seen_ns, container=entry.container, state="start",
                                     existing=entry.existing, cgroup=entry.path))

    @staticmethod
    def _container_map(cgroup_id: int, identity: Identity) -> dict:
        return {**identity.as_record(), "cgroup_id": cgroup_id}

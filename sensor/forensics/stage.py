"""The forensics stages: the flight recorder takes each batch's events, after identity
has named their cgroups, and lets a container's go a grace period after its cgroup is
removed; after detect, triggers freeze containers and queue their capture."""

from __future__ import annotations

import queue
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from sensor import records
from sensor.detect.rule_loader import PRIORITIES
from sensor.forensics.capture import Capturer, Request
from sensor.forensics.recorder import FlightRecorder
from sensor.forensics.value import NO_PRIORITY
from sensor.identity.cgroups import CgroupTable
from sensor.identity.stage import cgroup_changes
from sensor.kernel import layout
from sensor.kernel.clock import MonotonicClock
from sensor.kernel.control import Kernel
from sensor.log import get_logger
from sensor.system.freezer import resume

log = get_logger("capture")

STOP_HOLD_S = 2.0  # longest a stopped process waits for its container's alerts
SWEEP_S = 1.0      # how often the kernel's list of stopped processes is looked at
DISARM_S = 0.01    # far longer than a program runs


if TYPE_CHECKING:
    from sensor.pipeline import Batch
    from sensor.records import Record


class RecordFlight:
    name = "recorder"

    def __init__(self, recorder: FlightRecorder, cgroups: CgroupTable, clock: MonotonicClock, mkdir: int):
        self.recorder = recorder
        self.cgroups = cgroups
        self.clock = clock
        self.mkdir = mkdir  # MAYFLY_CGROUP_MKDIR
        self._known, self._hosts = -1, frozenset()

    def run(self, batch: Batch) -> None:
        if len(self.cgroups.entries) != self._known:  # the host's cgroups, anew when the table changed
            self._known = len(self.cgroups.entries)
            self._hosts = frozenset(i for i, e in self.cgroups.entries.items() if not e.identity.is_container)
        self.recorder.add(batch.arrays, self._hosts)
        for cgroup_id, _, _ in cgroup_changes(batch.arrays, self.mkdir, self.clock, removals=True):
            # The kernel's clock (CLOCK_MONOTONIC), which the recorder keeps time by.
            self.recorder.exited(cgroup_id, time.monotonic_ns())


class Capture:
    """After detect: the batch's alerts that trigger a capture (at or above the
    priority, or of a rule with `capture: true`; never one with `capture: false`) and
    the captures asked for (Sensor.capture) freeze their container and queue its
    capture; the cases sealed since come out as `case` records. Only containers are
    captured, one case at a time each."""

    name = "capture"

    def __init__(self, capturer: Capturer, kernel: Kernel, cgroups: CgroupTable, clock: MonotonicClock,
                 priority: str):
        if priority not in PRIORITIES:
            raise ValueError(f"unknown capture priority {priority!r}; known: {', '.join(PRIORITIES)}")
        self.capturer, self.kernel, self.cgroups, self.clock = capturer, kernel, cgroups, clock
        self.stopped_flag = layout.events().constants["MAYFLY_SYSCALL_STOPPED"]
        self._stops: dict[int, tuple[int, float]] = {}  # pid the kernel stopped -> (cgroup id, seen at)
        self._swept = time.monotonic()
        self.urgent = frozenset(PRIORITIES[:PRIORITIES.index(priority) + 1])
        self.rules: dict = {}  # the loaded rules by name (Alerts.rules), for their `capture`
        self.asked: queue.SimpleQueue[tuple[str, Future]] = queue.SimpleQueue()
        self._waiting: dict[int, list[Future]] = {}  # cgroup id -> futures of captures asked for
        # cgroup id -> the forensics settings its policy gave it at spawn (capture: none,
        # events or full; priority; ttl_s and weight: its retention class)
        self.settings_of: dict[int, dict] = {}

    def run(self, batch: Batch) -> None:
        self._note_stops(batch)
        for record in batch.records:
            if record["kind"] == "alert" and self._triggers(record):
                self.take(record, batch)
        self._continue_stops()
        while True:
            try:
                container_id, future = self.asked.get_nowait()
            except queue.Empty:
                break
            self._asked(container_id, future, batch)
        for manifest in self.capturer.take_sealed():
            batch.records.append(self._case_record(manifest))
            for future in self._waiting.pop(manifest["container"].get("cgroup_id"), []):
                if manifest.get("id"):
                    future.set_result(manifest)
                else:
                    future.set_exception(RuntimeError(f"the capture failed: {manifest.get('error')}"))

    def _triggers(self, alert: Record) -> bool:
        """triggers(), with the container's own settings from its policy."""
        own = self.settings_of.get((alert.get("container") or {}).get("cgroup_id")) or {}
        if own.get("capture") == "none":
            return False
        if own.get("priority") is None:
            return self.triggers(alert["rule"], alert["priority"])
        rule = self.rules.get(alert["rule"])
        asked = rule.body.get("capture") if rule is not None else None
        return asked if isinstance(asked, bool) else \
            PRIORITIES.index(alert["priority"]) <= PRIORITIES.index(own["priority"])

    def triggers(self, rule_name: str, priority: str) -> bool:
        """Whether an alert of this rule, at this priority, triggers a capture."""
        rule = self.rules.get(rule_name)
        asked = rule.body.get("capture") if rule is not None else None
        return asked if isinstance(asked, bool) else priority in self.urgent

    def take(self, alert: Record, batch: Batch) -> str:
        """Capture the alert's container (a trigger, or a response's `capture`); what
        became of it."""
        cgroup_id = (alert.get("container") or {}).get("cgroup_id")
        entry = self.cgroups.entries.get(cgroup_id)
        if entry is None or not entry.identity.is_container:
            return "skipped: not a container (the host is never frozen)"
        if cgroup_id in self.capturer.busy:
            return "done already"  # a container being captured has its case already
        if cgroup_id in batch.killed:
            return "skipped: the container was killed"
        stopped = [pid for pid, (cgroup, _) in self._stops.items() if cgroup == cgroup_id]
        for pid in stopped:  # the capture continues or kills them
            del self._stops[pid]
            self.kernel.let_go(pid)
        own = self.settings_of.get(cgroup_id) or {}
        return self._submit(Request(cgroup_id, self.cgroups.directory(cgroup_id), entry.container, [alert], alert["rule"],
                                    alert["priority"], int(alert["ts"]) - self.clock.offset, int(alert["ts"]),
                                    pid=(alert.get("proc") or {}).get("pid"), stopped=stopped,
                                    events_only=own.get("capture") == "events", ttl_s=own.get("ttl_s"),
                                    weight=own.get("weight", 1.0)), batch)

    def _asked(self, container_id: str, future: Future, batch: Batch) -> None:
        found = [(i, e) for i, e in self.cgroups.entries.items()
                 if e.container.get("id") == container_id and e.removed_ns is None and e.identity.is_container]
        if not found:
            future.set_exception(LookupError(f"no running container {container_id!r}"))
            return
        cgroup_id, entry = found[0]
        self._waiting.setdefault(cgroup_id, []).append(future)
        if cgroup_id not in self.capturer.busy:
            now = time.monotonic_ns()
            self._submit(Request(cgroup_id, self.cgroups.directory(cgroup_id), entry.container, [], "", NO_PRIORITY, now,
                                 now + self.clock.offset), batch)

    def _submit(self, request: Request, batch: Batch) -> str:
        why = self.capturer.submit(request)
        if why is None:
            return "queued"
        for pid in request.stopped:  # no capture will continue them
            resume(pid)
        batch.records.append(records.new("case", self.clock.now(), state="skipped", container=request.container,
                                         trigger={"rule": request.rule, "priority": request.priority}, why=why))
        for future in self._waiting.pop(request.cgroup_id, []):
            future.set_exception(RuntimeError(f"not captured: {why}"))
        return f"skipped: {why}"

    def _note_stops(self, batch: Batch) -> None:
        """The processes the kernel stopped at a stopping needle (the batch's events
        flagged MAYFLY_SYSCALL_STOPPED): held until their container's alerts are known."""
        now = time.monotonic()
        for events in batch.arrays.get("syscall", ()):
            flagged = events[(events["flags"] & self.stopped_flag) != 0]
            for pid, cgroup_id in zip(flagged["hdr"]["pid"].tolist(), flagged["hdr"]["cgroup_id"].tolist()):
                self._stops[pid] = (cgroup_id, now)

    def _continue_stops(self) -> None:
        """Stopped processes no capture took: continued once their container's alerts
        are out (its identity known), or after STOP_HOLD_S; and, every SWEEP_S, any the
        kernel still lists whose event never came (lost, or the sensor restarted)."""
        now = time.monotonic()
        pending = set(self.cgroups.pending_ids()) if self._stops else set()
        for pid, (cgroup_id, since) in list(self._stops.items()):
            if cgroup_id not in pending or now - since > STOP_HOLD_S:
                del self._stops[pid]
                resume(pid)
                self.kernel.let_go(pid)
        if now - self._swept < SWEEP_S:
            return
        self._swept = now
        kernel_now = time.monotonic_ns()
        for pid, since_ns in self.kernel.stopped().items():
            if pid not in self._stops and kernel_now - since_ns > STOP_HOLD_S * 1e9:
                log.warning("a process stopped at a trigger had no event: continued", pid=pid)
                resume(pid)
                self.kernel.let_go(pid)

    def close(self) -> None:
        """The sensor stops: the kernel stops no more processes, and every one it stopped
        that no capture took is continued (once the programs are detached, nothing else
        would)."""
        self.kernel.disarm_stops()
        time.sleep(DISARM_S)  # a program that read the spec before it changed has finished
        for pid in set(self._stops) | set(self.kernel.stopped()):
            resume(pid)
            self.kernel.let_go(pid)
        self._stops.clear()


    def _case_record(self, manifest: dict) -> Record:
        if not manifest.get("id"):
            return records.new("case", self.clock.now(), state="failed", container=manifest["container"],
                               why=manifest.get("error", ""))
        return records.new("case", self.clock.now(), state="sealed" if manifest["bytes"] else "not_kept",
                           case=manifest["id"], container=manifest["container"], trigger=manifest["trigger"],
                           bytes=manifest["bytes"], complete=manifest["complete"], missing=manifest["missing"],
                           timings=manifest["timings"])

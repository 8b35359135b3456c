"""Capture while the container lives: on a trigger the container's cgroup is frozen at
once (by the drain loop, one write), and a worker thread of its own takes the
evidence, seals the case and then thaws the container, leaves it frozen or kills it,
as configured. The drain loop never waits for a capture (docs/cases.md).

A case holds, beside the processes' and the container's evidence, the flight
recorder's events of the container from before the trigger and from after it, until
`after_s` past the trigger (the timeline), decoded into event records.
"""

from __future__ import annotations

import hashlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import msgpack

from sensor.forensics import container_evidence, process_evidence
from sensor.forensics.recorder import FlightRecorder
from sensor.forensics.store import Case, CaseStore
from sensor.log import get_logger
from sensor.records import Record
from sensor.system.freezer import Freezer, FreezerError, resume

log = get_logger("capture")

THAW, FREEZE, KILL = "thaw", "freeze", "kill"
AFTER_CAPTURE = (THAW, FREEZE, KILL)
QUEUE = 64  # captures waiting at most; past it a trigger's case is not opened (and a record says so)


@dataclass(frozen=True)
class Settings:
    after_capture: str = THAW            # what becomes of the container once captured
    after_s: float = 0.5                 # the timeline runs until this long after the trigger
    case_memory_bytes: int = 1 << 30     # memory read in all, over the container's processes
    max_processes: int = 256             # processes captured; the others are listed missing
    processes: process_evidence.Limits = field(default_factory=process_evidence.Limits)
    files: container_evidence.Limits = field(default_factory=container_evidence.Limits)

    def __post_init__(self):
        if self.after_capture not in AFTER_CAPTURE:
            raise ValueError(f"after a capture the container is {', '.join(AFTER_CAPTURE)}d, "
                             f"not {self.after_capture!r}")


@dataclass
class Request:
    cgroup_id: int
    cgroup_dir: str                      # absolute, in the cgroup2 hierarchy
    container: dict                      # as records carry it
    triggers: list[Record]               # alerts; none for a capture asked for by hand
    rule: str
    priority: str
    trigger_ns: int                      # kernel time (CLOCK_MONOTONIC) of the triggering event
    trigger_ts: int                      # the same in ns since the epoch, as records' `ts`
    pid: int | None = None               # the triggering process (host pid)
    stopped: list[int] = field(default_factory=list)  # tasks the kernel stopped at the trigger (last act)
    freezer: Freezer | None = None
    frozen_before: bool = False          # someone else had frozen it
    freeze_error: str | None = None
    freeze_asked_ns: int = 0             # when the drain loop asked for it frozen
    events_only: bool = False            # the policy's capture level: the timeline, no freeze, memory or files
    ttl_s: float | None = None           # the policy's retention class: how long its case may live...
    weight: float = 1.0                  # ...and its weight in the value score


@dataclass
class _Sealing:
    """A case captured, to be sealed at `due` (monotonic seconds) with its timeline."""
    due: float
    request: Request
    case: Case
    described: list[dict]
    timings: dict


class Capturer:
    """The capture worker. `timeline(container, events, described)`: event records of
    the recorder's arrays (the sensor's decoder, given the case's container and the
    processes captured). `on_case(manifest)` is called, in the worker's thread, with
    every case sealed."""

    def __init__(self, store: CaseStore, recorder: FlightRecorder | None, settings: Settings,
                 timeline: Callable[[dict, dict, list[dict]], list[Record]],
                 on_case: Callable[[dict], None] | None = None):
        self.store, self.recorder, self.settings = store, recorder, settings
        self.timeline, self.on_case = timeline, on_case
        self._queue: queue.Queue[Request | None] = queue.Queue(QUEUE)
        self._sealed: list[dict] = []
        self._lock = threading.Lock()
        self.busy: set[int] = set()      # cgroups with a capture queued or under way (the drain loop's)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mayfly-capture", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> str | None:
        """Freeze the container now (a write: the worker waits for it) and queue its
        capture; or why it was not (nothing frozen then)."""
        if self._closed:
            return "the sensor is stopping"
        if self._queue.full():
            return f"{QUEUE} captures are waiting already"
        try:
            if not request.events_only:
                request.freezer = Freezer(request.cgroup_dir, request.pid)
                request.frozen_before = request.freezer.frozen
                if not request.frozen_before:
                    request.freezer.start_freezing()
        except FreezerError as e:
            request.freeze_error = str(e)
        request.freeze_asked_ns = time.monotonic_ns()
        self.busy.add(request.cgroup_id)
        self._queue.put_nowait(request)
        return None

    def take_sealed(self) -> list[dict]:
        """The manifests sealed since the last call (the drain loop makes `case` records)."""
        with self._lock:
            sealed, self._sealed = self._sealed, []
        for manifest in sealed:
            self.busy.discard(manifest["container"].get("cgroup_id"))
        return sealed

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the captures queued (their containers are frozen) and stop."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("captures still under way at the stop", queued=self._queue.qsize())

    def _run(self) -> None:
        """Captures as they come; each case is sealed once its timeline's window has
        passed, meanwhile the next captures go on."""
        waiting: list[_Sealing] = []  # captured, waiting for the events after their trigger, soonest first
        closing = False
        while not closing or waiting:
            if not closing:
                timeout = max(waiting[0].due - time.monotonic(), 0.0) if waiting else None
                try:
                    request = self._queue.get(timeout=timeout)
                except queue.Empty:
                    request = False
                if request is None:
                    closing = True  # the sensor stops: what is captured is sealed now
                elif request:
                    sealing = self._guarded(request, self._capture, request)
                    if isinstance(sealing, _Sealing):
                        waiting.append(sealing)
                        waiting.sort(key=lambda w: w.due)
                    else:
                        self._done(sealing)
            while waiting and (closing or waiting[0].due <= time.monotonic()):
                sealing = waiting.pop(0)
                self._done(self._guarded(sealing.request, self._seal, sealing))

    def _guarded(self, request: Request, step: Callable, argument):
        try:
            return step(argument)
        except Exception as e:  # a capture's fault must not end the worker
            log.exception("capture failed", container=request.container.get("id"), error=str(e))
            return {"id": None, "container": request.container, "error": str(e), "bytes": 0}

    def _done(self, manifest: dict) -> None:
        with self._lock:
            self._sealed.append(manifest)
        if self.on_case is not None and manifest.get("id"):
            try:
                self.on_case(manifest)
            except Exception as e:
                log.error("on_case callback failed", case=manifest["id"], error=f"{type(e).__name__}: {e}")

    def _capture(self, request: Request) -> _Sealing:
        """Freeze (wait for it), capture, release: the case is ready for its timeline."""
        started = time.monotonic_ns()
        freezer, frozen_ns = request.freezer, None
        if freezer is not None and request.freeze_error is None:
            try:
                freezer.freeze()
                frozen_ns = time.monotonic_ns()
            except FreezerError as e:
                request.freeze_error = str(e)
        timings = {"trigger_to_freeze_asked_s": (request.freeze_asked_ns - request.trigger_ns) / 1e9,
                   "trigger_to_worker_s": (started - request.trigger_ns) / 1e9}
        if frozen_ns is not None:
            timings["trigger_to_frozen_s"] = (frozen_ns - request.trigger_ns) / 1e9
        released = False
        try:
            case = self.store.open(request.container, request.triggers, request.rule, request.priority,
                                   _exe_sha256(request.pid), weight=request.weight, ttl_s=request.ttl_s)
            if request.frozen_before:
                case.missing("freeze", "the container was frozen by someone else already: it is left frozen")
            described = self._evidence(case, request, freezer if frozen_ns is not None else None)
            timings["capture_s"] = (time.monotonic_ns() - (frozen_ns or started)) / 1e9
            if frozen_ns is not None and not request.frozen_before and not freezer.frozen:
                case.missing("a still container", "someone thawed it during the capture: its memory and files "
                                                  "may have changed while they were read")
            action = self._release(case, request, frozen_ns is not None)
            released = True
        finally:
            if not released:  # the capture failed: the container is not left frozen for it
                self._release(None, request, frozen_ns is not None)
        case.capture.update(trigger_ts=request.trigger_ts, after_capture=action, stopped_by_kernel=request.stopped)
        due = request.trigger_ns / 1e9 + self.settings.after_s if self.recorder is not None else 0.0
        return _Sealing(due, request, case, described, timings)

    def _seal(self, sealing: _Sealing) -> dict:
        """The timeline, then the manifest."""
        case, request, timings = sealing.case, sealing.request, sealing.timings
        started = time.monotonic_ns()
        self._add_timeline(case, request, sealing.described)
        timings["seal_s"] = (time.monotonic_ns() - started) / 1e9
        try:
            manifest = case.seal(**timings)
        except (OSError, sqlite3.Error) as e:  # no room on the disk even for the manifest
            log.error("case not kept", case=case.id, why=f"its manifest cannot be written: {e}")
            self.store.forget_unsealed(case.id)
            return {"id": None, "container": request.container, "error": f"case {case.id} not kept: {e}", "bytes": 0}
        log.info("case sealed", case=case.id, container=request.container.get("id"), bytes=manifest["bytes"],
                 complete=manifest["complete"], missing=len(manifest["missing"]))
        return manifest

    def _evidence(self, case: Case, request: Request, freezer: Freezer | None) -> list[dict]:
        """The processes' and the container's evidence; what is gone is listed missing."""
        if request.events_only:
            case.missing("processes, memory and files", "the policy's capture level for this container is "
                         "events: its timeline only")
            return []
        if freezer is None:
            case.missing("processes, memory and files", "the container could not be frozen: "
                         f"{request.freeze_error or 'it was gone before its capture'}")
            return []
        try:
            pids = freezer.pids()
        except FreezerError as e:
            pids = []
            case.missing("processes", f"cannot be listed: {e}")
        if not pids:
            case.missing("processes, memory and files", "the container was gone before its capture")
            return []
        described, left = [], self.settings.case_memory_bytes
        for pid in pids[:self.settings.max_processes]:
            limits = replace(self.settings.processes, memory_bytes=min(self.settings.processes.memory_bytes, left))
            described.append(process_evidence.capture(case, pid, limits))
            left -= described[-1].get("memory", {}).get("read_bytes", 0)
        if len(pids) > self.settings.max_processes:
            case.missing(f"{len(pids) - self.settings.max_processes} processes",
                         f"over the cap of {self.settings.max_processes} processes a case")
        container_evidence.process_tree(case, described)
        try:
            upper = container_evidence.upper_dir(pids[0])
        except OSError as e:
            upper = None
            case.missing("written files", f"its mounts cannot be read: {e.strerror}")
        else:
            if upper is None:
                case.missing("written files", "its root is not an overlay: there is no upper dir to read")
        if upper is not None:
            try:
                container_evidence.written_files(case, upper, self.settings.files)
            except OSError as e:
                case.missing("written files", f"{upper}: {e.strerror}")
        container_evidence.sockets(case, pids[0])
        return described

    def _release(self, case: Case | None, request: Request, frozen: bool) -> str:
        """Thaw, leave frozen or kill, as configured (one someone else froze stays
        frozen); the tasks the kernel stopped are continued unless killed. What was done."""
        action = FREEZE if request.frozen_before else self.settings.after_capture
        if request.freezer is None:  # no cgroup to act on: it was gone before its capture
            return action
        try:
            if action == KILL:
                request.freezer.kill()
            elif action == THAW and frozen:
                request.freezer.thaw()
        except FreezerError as e:
            log.error("container not released", container=request.container.get("id"), action=action, error=str(e))
            if case is not None:
                case.missing(f"the container {action}ed", str(e))
        if action != KILL:
            for pid in request.stopped:
                resume(pid)
        return action

    def _add_timeline(self, case: Case, request: Request, described: list[dict]) -> None:
        if self.recorder is None:
            case.missing("timeline", "the flight recorder is off")
            return
        events = self.recorder.events(request.cgroup_id)
        if not events:
            case.missing("timeline", "the flight recorder holds no events of the container")
            return
        timeline = self.timeline(request.container, events, described)
        before = sum(1 for r in timeline if r["ts"] <= request.trigger_ts)
        case.add("events", "timeline.msgpack", msgpack.packb(timeline, use_bin_type=True),
                 records=len(timeline), before_trigger=before)


def _exe_sha256(pid: int | None) -> str:
    """The triggering process's executable's sha256 ("" when it is gone): with the rule
    and image, what makes cases alike."""
    if pid is None:
        return ""
    try:
        with open(f"/proc/{pid}/exe", "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""

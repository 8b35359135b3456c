"""The Sensor: load the programs, drain the ring buffer, hand records to sinks and callers."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from sensor import records, resources
from sensor.detect import rule_loader
from sensor.kernel import layout, maps, syscalls
from sensor.system import host
from sensor.detect.alerts import Alerts
from sensor.kernel.bpf_program import ProgramConfig, Programs
from sensor.identity.cgroups import CgroupTable
from sensor.output.decode import OTHER_TYPES, Decoder, MonotonicClock
from sensor.identity.fds import FD_SYSCALLS, FdTable
from sensor.log import get_logger
from sensor.identity.processes import ProcessTable
from sensor.records import Record
from sensor.output.reports import KernelReports
from sensor.kernel.ringbuf import RingReader
from sensor.detect.rows import Rows
from sensor.output.sinks import CallbackSink, Sink

log = get_logger("sensor")

ALL = "all"
PENDING_RETRY_MS = 5  # how often a cgroup whose identity is pending is looked at again
RULES_CHECK_S = 1.0   # how often the rule files are looked at for changes


class Sensor:
    """A running sensor. Use it as a context manager:

        with Sensor(sinks=[FileSink("records.msgpack")], emit_events=["execve"]) as sensor:
            for record in sensor:        # or: sensor.poll() in your own loop
                ...

    `rules`: rule file paths; None means the built-in set. `emit_events`: which raw
    events become `event` records: None (none), "all", or evt.type names such as
    "execve", "openat", "fork", "procexit". `on_record` is called with every record,
    after the sinks. `report_interval`: seconds between flow and syscall-count records.
    `identity_deadline`: seconds a new cgroup's records wait for its runtime's state
    before they go out marked `resolved: false`. `container_grace`: seconds a removed
    container's identity is kept for late records. `ancestors`: how many generations
    of process names records carry (`proc.anames`).

    One thread polls (iterates); `stop()` may be called from any thread or a signal
    handler. Needs root (CAP_BPF and CAP_PERFMON).
    """

    def __init__(self, rules: Iterable[str | os.PathLike] | None = None, sinks: Iterable[Sink] = (),
                 on_record: Callable[[Record], None] | None = None, config: ProgramConfig | None = None,
                 emit_events: str | Iterable[str] | None = None, report_interval: float = 10.0,
                 identity_deadline: float = 1.0, container_grace: float = 300.0, ancestors: int = 5):
        self.rule_paths = list(rules) if rules is not None else resources.builtin_rule_files()
        self.sinks = list(sinks) + ([CallbackSink(on_record)] if on_record else [])
        self.config = config or ProgramConfig()
        if isinstance(emit_events, str) and emit_events != ALL:
            emit_events = [emit_events]
        self.emit_types = None if emit_events in (None, ALL) else frozenset(emit_events)
        self.emit = emit_events is not None
        self.report_interval = report_interval
        self.identity_deadline = identity_deadline
        self.container_grace = container_grace
        self.ancestors = ancestors
        self.ruleset: rule_loader.RuleSet | None = None
        self.programs: Programs | None = None
        self._ring: RingReader | None = None
        self._spill: RingReader | None = None
        self._spilled: list[tuple[str, np.ndarray]] = []  # spill ring events waiting for the main ring
        self._stopped = False
        self._delivered: Counter = Counter()
        self._emitted = 0

    def __enter__(self) -> Sensor:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        while not self.stopped:
            yield from self.poll()

    def start(self) -> None:
        self.table = syscalls.table()
        self._check_types(self.emit_types or ())
        self.ruleset, self.alerts = self._load_rules()
        self._next_rules: tuple[rule_loader.RuleSet, Alerts] | None = None
        self._reloading: threading.Thread | None = None
        self._rule_stamps, self._stamped = _stamps(self.rule_paths), time.monotonic()
        self._ignored_hosts: set[int] = set()

        self.programs = Programs(self.config)
        try:
            self.set_rate_limit(self.config.cgroup_rate, self.config.cgroup_burst)
            self._apply_rules()
            self.clock = MonotonicClock()
            self.processes = ProcessTable(self.table, self.clock, ancestors=self.ancestors)
            self.processes.scan()
            self.fds = FdTable(self.table)
            self._seed_parents()
            self.cgroups = CgroupTable(host.cgroup2_root(), deadline_s=self.identity_deadline,
                                       grace_s=self.container_grace)
            self.cgroups.scan(self.clock.now())
            self._take_hosts()
            self.cgroups.start_watching()
            self.decoder = Decoder(self.table, self.cgroups, self.processes, self.clock)
            self.reports = KernelReports(self.programs, self.table, self.cgroups, self.clock,
                                         counting=self.config.count_syscalls)
            ring, spill = self.programs["events"], self.programs["spill"]
            self._ring = RingReader(ring.map_fd, ring.max_entries)
            self._spill = RingReader(spill.map_fd, spill.max_entries, batch_bytes=spill.max_entries)
        except BaseException:
            if getattr(self, "cgroups", None) is not None:
                self.cgroups.stop_watching()
            self.programs.close()
            raise
        self._started = self._last_report = time.monotonic()
        log.info("sensor started", pid=os.getpid(), programs=len(self.programs.attached))
        self._dispatch([records.new("sensor", self.clock.now(), state="ready", pid=os.getpid(),
                                    programs=self.programs.attached, captured=self.captured)]
                       + self.cgroups.take())  # the containers already running

    def _load_rules(self) -> tuple[rule_loader.RuleSet, Alerts]:
        ruleset = rule_loader.load(self.rule_paths)
        for problem in ruleset.problems:
            log.error("rule rejected", problem=str(problem))
        log.info("rules loaded", rules=ruleset.loaded, rejected=len(ruleset.rejected), disabled=len(ruleset.disabled))
        return ruleset, Alerts(ruleset)

    def _apply_rules(self) -> None:
        """Decode what is emitted and what the rules need, and have the kernel capture it."""
        if (self.emit and self.emit_types is None) or (self.alerts.rules and self.alerts.types is None):
            self._decode_types: frozenset[str] | None = None  # every type
        else:
            self._decode_types = (self.emit_types or frozenset()) | (self.alerts.types or frozenset())
        known = set(self.table.syscalls) | set(OTHER_TYPES)
        capture = None if self._decode_types is None else self._decode_types & known
        rule_types = self.table.syscalls if self.alerts.types is None else self.alerts.types
        self._rule_nrs = np.array([self.table.numbers[t] for t in rule_types if t in self.table.numbers], np.uint32)
        if capture is not None and self.alerts.reads_fds:
            capture |= FD_SYSCALLS  # captured for the fd table, not decoded
        self.set_capture(capture)
        # With only container rules and nothing else emitted, the host's cgroups send nothing.
        self._containers_only = self.alerts.containers_only and not self.emit
        if not self._containers_only:
            for cgroup_id in self._ignored_hosts:
                self.set_policy(cgroup_id, track=True)
            self._ignored_hosts = set()
        elif getattr(self, "cgroups", None) is not None:
            self._ignore_hosts([i for i, e in self.cgroups.entries.items() if not e.identity.is_container])

    def _take_hosts(self) -> None:
        hosts = self.cgroups.take_hosts()
        if self._containers_only:
            self._ignore_hosts(hosts)

    def _ignore_hosts(self, cgroup_ids) -> None:
        for cgroup_id in cgroup_ids:
            if cgroup_id not in self._ignored_hosts:
                self.set_policy(cgroup_id, track=False)
                self._ignored_hosts.add(cgroup_id)

    def reload(self) -> None:
        """Load the rule files again, aside, and use them from the next batch on; if any
        problem is found, the rules in use stay, and the problems are logged. Safe to call
        from a signal handler (SIGHUP) or any thread; `mayfly run` also calls it when a
        rule file changes."""
        if self._reloading is None or not self._reloading.is_alive():
            self._reloading = threading.Thread(target=self._load_aside, name="mayfly-rules", daemon=True)
            self._reloading.start()

    def _load_aside(self) -> None:
        ruleset = rule_loader.load(self.rule_paths)
        if ruleset.problems:
            for problem in ruleset.problems:
                log.error("rule problem", problem=str(problem))
            log.error("rules not reloaded: the rules in use stay", problems=len(ruleset.problems))
            return
        self._next_rules = ruleset, Alerts(ruleset)

    def _swap_rules(self) -> None:
        """Between batches: a reloaded rule set, if one is ready; a changed rule file
        (looked at every RULES_CHECK_S) asks for one."""
        if self._next_rules is not None:
            (self.ruleset, self.alerts), self._next_rules = self._next_rules, None
            self._apply_rules()
            log.info("rules reloaded", rules=self.ruleset.loaded, disabled=len(self.ruleset.disabled))
        if time.monotonic() - self._stamped >= RULES_CHECK_S:
            stamps, self._stamped = _stamps(self.rule_paths), time.monotonic()
            if stamps != self._rule_stamps:
                self._rule_stamps = stamps
                log.info("a rule file changed: reloading")
                self.reload()

    def _check_types(self, types: Iterable[str]) -> None:
        known = set(self.table.syscalls) | set(OTHER_TYPES)
        unknown = sorted(set(types) - known)
        if unknown:
            raise ValueError(f"unknown event types {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def set_capture(self, types: Iterable[str] | None) -> None:
        """Which syscalls the kernel captures (None: all Mayfly knows), with their
        results. Successful execs are always captured: they are how processes and their
        containers are known; failed ones only when asked for. Takes effect at once; a
        syscall not captured costs the kernel a few array lookups."""
        types = set(self.table.syscalls) if types is None else set(types)
        self._check_types(types)
        asked = types & set(self.table.syscalls)
        self.captured = sorted(asked | set(syscalls.EXEC))
        self.programs.set_capture(self.table, set(self.captured), asked)

    def set_rate_limit(self, rate: int, burst: int) -> None:
        """Events per second one cgroup may emit on average (0: no limit), and at once."""
        entry = dataclasses.replace(self.config, cgroup_rate=rate, cgroup_burst=burst).kernel_config()
        entry["self_tgid"] = os.getpid()
        maps.write_array(self.programs["config"], entry)

    def set_policy(self, cgroup_id: int, track: bool) -> None:
        """Track a cgroup (the default) or drop its events in the kernel. Its syscalls are
        still counted."""
        policy = self.programs["cgroup_policy"]
        value = layout.events().constants["MAYFLY_POLICY_TRACK" if track else "MAYFLY_POLICY_IGNORE"]
        policy[policy.Key(cgroup_id)] = policy.Leaf(value)

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def idle(self) -> bool:
        """Nothing unread in the ring buffer and no records held for a container's
        identity: everything the kernel committed so far has been dispatched (once the
        poll under way, if any, returns). Safe to read from any thread."""
        return (self._ring is not None and not self._ring.pending() and not self._spill.pending()
                and not self._spilled and not self.cgroups.pending)

    def stop(self) -> None:
        """Ask a `for record in sensor` loop to end after the current poll."""
        self._stopped = True

    def poll(self, timeout_ms: int = 100) -> list[Record]:
        """Wait up to `timeout_ms` for events; return (and dispatch) the records."""
        if self._ring is None:
            raise RuntimeError("the sensor is not running: use it as a context manager or call start()")
        self._swap_rules()
        if self.cgroups.pending:
            # A new container's runtime writes its state a few ms after its cgroup, and may
            # remove it a few ms after its exec: look again soon, not at the next event.
            timeout_ms = min(timeout_ms, PENDING_RETRY_MS)
        self._ring.wait(timeout_ms / 1000)
        unknown = self._keep_spilled()
        arrays, more = self.decoder.split(self._ring.drain())
        unknown += more
        self._release_spilled(arrays)
        self._delivered.update({kind: sum(map(len, groups)) for kind, groups in arrays.items()})
        self.decoder.apply_cgroups(arrays, removals=False)
        # Identities before anything else: a short-lived container's runtime state may
        # be gone a few milliseconds after its exec woke us up.
        batch = self.cgroups.tick()
        self.cgroups.account(arrays)
        self.processes.apply(arrays)
        fd_notes = self.fds.apply(arrays)
        # The syscalls of containers whose identity is known are matched straight from
        # their arrays, and become records only when they match or are emitted. The rest
        # (other kinds, held containers' syscalls) become records first, as rules need.
        live, held = self._split_held(arrays.get("syscall", []))
        rows = self.decoder.rows(live, fd_notes, self._rule_nrs) if self.alerts.rules else []
        decode = self._decode_types is None or self._decode_types
        events = self.decoder.records(dict(arrays, syscall=held), self._decode_types, fd_notes) if decode else []
        events = [record for record in events if not self.cgroups.hold(record)]
        emitted = self.decoder.records({"syscall": live}, self.emit_types, fd_notes) if self.emit else []
        batch += sorted(events + emitted, key=lambda record: record["ts"])
        batch += self.reports.lost(Counter(unknown_kind=unknown))
        if time.monotonic() - self._last_report >= self.report_interval:
            batch += self._reports()
        for cgroup_id, ts in self.decoder.apply_cgroups(arrays, removals=True):
            self.cgroups.removed(cgroup_id, ts, self.reports.cgroup_losses(cgroup_id))
            self.reports.forget_cgroup(cgroup_id)
            if cgroup_id in self._ignored_hosts:
                self._ignored_hosts.discard(cgroup_id)
                policy = self.programs["cgroup_policy"]
                policy.pop(policy.Key(cgroup_id), None)
        batch = self._matched(batch + self.cgroups.take(), rows, emitted)
        self._take_hosts()
        self._dispatch(batch)
        return batch

    def _keep_spilled(self) -> int:
        """Copy out what the spill ring holds, before the main ring's split reuses the
        decoder's buffers. Returns how many spilled records were of unknown kinds."""
        if not self._spill.pending():
            return 0
        spilled, unknown = self.decoder.split(self._spill.drain())
        self._spilled += [(kind, events.copy()) for kind, groups in spilled.items() for events in groups]
        return unknown

    def _release_spilled(self, arrays: dict[str, list[np.ndarray]]) -> None:
        """Add to a batch's arrays the spilled lifecycle events of no later time than
        what the main ring has given so far: a container's removal comes after its last
        events."""
        if not self._spilled:
            return
        drained = [events["hdr"]["ktime_ns"].max() for groups in arrays.values() for events in groups if len(events)]
        watermark = max(drained, default=0) if self._ring.pending() else np.iinfo(np.uint64).max
        kept = []
        for kind, events in self._spilled:
            due = events["hdr"]["ktime_ns"] <= watermark
            if due.any():
                arrays.setdefault(kind, []).append(events[due])
            if not due.all():
                kept.append((kind, events[~due]))
        self._spilled = kept

    def _split_held(self, groups: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Syscall arrays split into the events of cgroups whose records go out now and
        those of cgroups whose records are held for their identity."""
        pending = self.cgroups.pending_ids()
        if not pending:
            return groups, []
        held = [np.isin(events["hdr"]["cgroup_id"], pending) for events in groups]
        return [g[~h] for g, h in zip(groups, held)], [g[h] for g, h in zip(groups, held)]

    def _matched(self, batch: list[Record], rows: list[Rows] = (), emitted: list[Record] = ()) -> list[Record]:
        """The batch with the rules' alerts, and without the events that were decoded
        for the rules only. The rules see the batch's records but `emitted` (events of
        `rows`, which they read from the arrays). Records held for a container's
        identity come here when it is known, so rules see containers named."""
        alerts = self.alerts(batch, rows, emitted)
        return [record for record in batch if record["kind"] != "event" or self._emits(record)] + alerts

    def _emits(self, record: Record) -> bool:
        return self.emit and (self.emit_types is None or record["evt"]["type"] in self.emit_types)

    def report(self) -> list[Record]:
        """Flow and syscall-count records now (they also come every `report_interval`)."""
        batch = self._reports()
        self._dispatch(batch)
        return batch

    def _reports(self) -> list[Record]:
        """Syscall-count and flow records; those of a cgroup whose identity is pending
        are held with its events, and go out named."""
        interval = time.monotonic() - self._last_report
        self._last_report = time.monotonic()
        result = self.reports.syscall_counts(interval) if self.reports.counting else []
        if self.config.flows:
            result += self.reports.flows(interval)
        return [record for record in result if not self.cgroups.hold(record)]

    def close(self) -> None:
        self._stopped = True
        if self._ring is None:
            return
        for _ in range(1024):  # what is still in the ring buffer (bounded: a stuck record stays)
            self.poll(0)
            if not self._ring.pending() and not self._spill.pending() and not self._spilled:
                break
        final = self._matched(self.cgroups.flush()) + self._reports()
        final.append(records.new("sensor", self.clock.now(), state="stopped",
                                 uptime_s=round(time.monotonic() - self._started, 3),
                                 events=dict(self._delivered), records=self._emitted + 1,
                                 lost=dict(self.reports.lost_totals),
                                 tables={"cgroups": len(self.cgroups.entries),
                                         "processes": len(self.processes.entries),
                                         "fd_tables": len(self.fds.processes)}))
        self._dispatch(final)
        self.cgroups.stop_watching()
        self._ring.close()
        self._spill.close()
        self._ring = self._spill = None
        self.programs.close()
        self.programs = None
        for sink in self.sinks:
            sink.close()

    def _dispatch(self, batch: list[Record]) -> None:
        for record in batch:
            for sink in self.sinks:
                sink.write(record)
        self._emitted += len(batch)
        if batch:
            for sink in self.sinks:
                sink.flush()

    def _seed_parents(self) -> None:
        """Fill the kernel's parent_of map for processes that forked before we started."""
        parent_of = self.programs["parent_of"]
        for pid, ppid in self.processes.parents().items():
            parent_of[parent_of.Key(pid)] = parent_of.Leaf(ppid)


def _stamps(paths) -> list[tuple | None]:
    """What says a file changed: its inode, size and modification time (None: gone)."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append(None)
    return stamps

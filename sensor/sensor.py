"""The Sensor: the public face. It loads the programs, builds the pipeline of stages
(sensor/pipeline.py) that every batch goes through, and hands records to sinks and
callers; rule reloads and run-time control go through it."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future

import numpy as np

from sensor import records, resources
from sensor.detect import needles, rule_loader
from sensor.detect.alerts import Alerts
from sensor.detect.rows import RowMaker
from sensor.detect.stage import Detect
from sensor.forensics import capture
from sensor.forensics.recorder import FlightRecorder
from sensor.forensics.stage import Capture, RecordFlight
from sensor.forensics.store import CaseStore
from sensor.forensics.timeline import Timeline
from sensor.identity.cgroups import CgroupTable
from sensor.identity.fd_walk import FD_SYSCALLS
from sensor.identity.fds import FdTable
from sensor.identity.processes import ProcessTable
from sensor.identity.stage import Identify
from sensor.identity.users import Users
from sensor.kernel import layout, syscalls
from sensor.kernel.bpf_program import ProgramConfig
from sensor.kernel.clock import MonotonicClock
from sensor.kernel.control import Kernel
from sensor.kernel.split import Splitter
from sensor.kernel.stage import Decode, Drain
from sensor.log import get_logger
from sensor.output.events import OTHER_TYPES, EventRecords, Selection
from sensor.output.reports import LOST_EVERY_S, KernelReports
from sensor.output.sinks import CallbackSink, Sink
from sensor.output.stage import Account, Dispatch, MakeEvents
from sensor.pipeline import Batch, Pipeline
from sensor.policy import policy_file
from sensor.policy.host_facts import HostFacts
from sensor.policy.stage import Place
from sensor.respond.actions import DEFAULT_LEDGER, Actuator
from sensor.respond.stage import Respond
from sensor.records import Record
from sensor.system import host

log = get_logger("sensor")

ALL = "all"
PENDING_RETRY_MS = 5  # how often a cgroup whose identity is pending is looked at again
HELD_RETRY_MS = 1     # ...and while the spawn gate holds a container for its verdict
RULES_CHECK_S = 1.0   # how often the rule files are looked at for changes
TRIM_EVERY_S = 10.0   # how often the C heap's free pages go back to the kernel (a trim takes about a ms)


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
    of process names records carry (`proc.anames`). `lost_interval`: at most one `lost`
    record per reason in that many seconds (each counts everything since the last).
    `recorder`: the flight recorder that keeps each container's last events for its
    cases (sensor.forensics.recorder): True for the default one (64 MiB in all, each
    container's kept `container_grace` after it exits), False for none, or your own.
    `cases`: a case store (sensor.forensics.store.CaseStore, or its directory) to
    capture containers into (docs/cases.md); None (the default) captures nothing. An
    alert at `capture_priority` or above, or of a rule with `capture: true`, freezes its
    container, captures it as `capture_settings` say, and seals a case; `on_case` is
    called with each case's manifest, in the capture's own thread; `capture()` asks for
    one by hand.

    `policy`: a policy file (docs/policy.md), or a loaded Policy: each container's
    verdict from its spawn, `policy` records, the spawn gate, responses to alerts and
    how they are weighed; reloaded with the rules. Alerts of rules with `actions:` act
    under the default policy without one. `frozen_ledger`: where the containers a
    response froze are written down, for a sensor that starts after a crash.

    One thread polls (iterates); `stop()` may be called from any thread or a signal
    handler. Needs root (CAP_BPF and CAP_PERFMON). `kernel`: a factory of the kernel
    side from the config (tests pass sensor.testing.kernel.FakeKernel to run the whole
    pipeline without root).
    """

    def __init__(self, rules: Iterable[str | os.PathLike] | None = None, sinks: Iterable[Sink] = (),
                 on_record: Callable[[Record], None] | None = None, config: ProgramConfig | None = None,
                 emit_events: str | Iterable[str] | None = None, report_interval: float = 10.0,
                 identity_deadline: float = 1.0, container_grace: float = 300.0, ancestors: int = 5,
                 lost_interval: float = LOST_EVERY_S, kernel: Callable[[ProgramConfig], Kernel] = Kernel,
                 recorder: FlightRecorder | bool = True, cases: CaseStore | str | os.PathLike | None = None,
                 on_case: Callable[[dict], None] | None = None, capture_priority: str = "WARNING",
                 capture_settings: capture.Settings | None = None,
                 policy: str | os.PathLike | policy_file.Policy | None = None, frozen_ledger: str = DEFAULT_LEDGER):
        self.rule_paths = list(rules) if rules is not None else resources.builtin_rule_files()
        self.sinks = list(sinks) + ([CallbackSink(on_record)] if on_record else [])
        self.config = config or ProgramConfig()
        if isinstance(emit_events, str) and emit_events != ALL:
            emit_events = [emit_events]
        self.selection = Selection(emit=emit_events is not None,
                                   emit_types=None if emit_events in (None, ALL) else frozenset(emit_events))
        self.report_interval = report_interval
        self.identity_deadline = identity_deadline
        self.container_grace = container_grace
        self.recorder = FlightRecorder(grace_s=container_grace) if recorder is True else recorder or None
        self.ancestors = ancestors
        self.lost_interval = lost_interval
        self.cases = cases
        self.on_case = on_case
        self.capture_priority = capture_priority
        self.capture_settings = capture_settings or capture.Settings()
        self._capture: Capture | None = None
        self.policy_path = None if policy is None or isinstance(policy, policy_file.Policy) else os.fspath(policy)
        self.policy = policy if isinstance(policy, policy_file.Policy) else None
        self._place: Place | None = None
        self.frozen_ledger = frozen_ledger
        self.ruleset: rule_loader.RuleSet | None = None
        self.kernel: Kernel | None = None
        self._make_kernel = kernel
        self.pipeline: Pipeline | None = None
        self._stopped = False

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
        self._check_types(self.selection.emit_types or ())
        self.ruleset, self.alerts = self._load_rules()
        if self.policy_path is not None:
            self.policy = _load_policy(self.policy_path, starting=True)
        self._policy_in_use = self.policy or policy_file.Policy()
        self._next_rules: tuple[rule_loader.RuleSet, Alerts] | None = None
        self._next_policy: policy_file.Policy | None = None
        self._changes: queue.SimpleQueue = queue.SimpleQueue()  # run-time control, applied between batches
        self._reloading: threading.Thread | None = None
        self._rule_stamps, self._stamped = _stamps(self._watched()), time.monotonic()

        self.kernel = self._make_kernel(self.config)
        try:
            self.set_rate_limit(self.config.cgroup_rate, self.config.cgroup_burst)
            self.clock = MonotonicClock()
            self.processes = ProcessTable(self.table, self.clock, ancestors=self.ancestors)
            self.processes.scan()
            self.kernel.seed_parents(self.processes.parents())
            self.fds = FdTable(self.table)
            self.cgroups = CgroupTable(host.cgroup2_root(), deadline_s=self.identity_deadline,
                                       grace_s=self.container_grace)
            self.cgroups.scan(self.clock.now())
            self.pipeline = self._build()
            self._apply_rules()
            self.cgroups.start_watching()
        except BaseException:
            if getattr(self, "cgroups", None) is not None:
                self.cgroups.stop_watching()
            if self._capture is not None:
                self._capture.capturer.close()
                self._close_own_store()
            self.kernel.close()
            raise
        self._started = time.monotonic()
        host.release_free_memory(compilers=True)  # what compiling the programs and the rules left behind
        self._trimmed = time.monotonic()
        log.info("sensor started", pid=os.getpid(), programs=len(self.kernel.attached))
        self._identify.take_hosts()
        ready = Batch(records=[records.new("sensor", self.clock.now(), state="ready", pid=os.getpid(),
                                           programs=self.kernel.attached, captured=self.captured)]
                      + self.cgroups.take())  # the containers already running
        if self._place is not None:
            self._place.run(ready)
            self._place.arm()
        self._dispatch.run(ready)

    def _build(self) -> Pipeline:
        """The stages every batch goes through, in order (sensor/pipeline.py)."""
        mkdir = layout.events().constants["MAYFLY_CGROUP_MKDIR"]
        users = Users()
        events = EventRecords(self.table, self.cgroups, self.processes, users, self.clock, mkdir)
        self._identify = Identify(self.kernel, self.cgroups, self.processes, self.fds, self.clock, mkdir)
        self.reports = KernelReports(self.kernel, self.table, self.cgroups, self.clock,
                                     counting=self.config.count_syscalls, lost_every_s=self.lost_interval)
        self._account = Account(self.reports, self._identify, self.report_interval, self.config.flows)
        self._detect = Detect(self.alerts, np.zeros(0, np.uint32),
                              RowMaker(self.table, self.cgroups, self.processes, users, events.syscall_record),
                              self.selection)
        self._decode = Decode(self.kernel, Splitter())
        self._dispatch = Dispatch(self.sinks)
        recording = [RecordFlight(self.recorder, self.cgroups, self.clock, mkdir)] if self.recorder is not None else []
        capturing, placing = [], []
        if self.cases is not None:
            store = self.cases if isinstance(self.cases, CaseStore) else CaseStore(self.cases, writer=True)
            capturer = capture.Capturer(store, self.recorder, self.capture_settings,
                                        Timeline(self.table, self.clock, mkdir), self.on_case)
            self._capture = Capture(capturer, self.kernel, self.cgroups, self.clock, self.capture_priority)
            capturing = [self._capture]
        if self.policy is not None:
            self._place = Place(self.kernel, self.cgroups, self.clock, self.policy,
                                HostFacts({}, self._capture.capturer.store.list if self._capture else None), mkdir,
                                self._forensics_of if self._capture else None)
            placing = [self._place]
        self._respond = Respond(Actuator(self.kernel, self.frozen_ledger, self.config.flows), self._policy_in_use,
                                self.cgroups, self.clock, mkdir, host.cgroup_id(host.cgroup2_dir_of()),
                                self._capture.take if self._capture is not None else None)
        self._respond.actuator.set_allowed(self._policy_in_use.settings.isolate_allow)
        for left in self._respond.actuator.recover(self._policy_in_use.settings.failure == "open"):
            log.warning("a container a stopped sensor left frozen was released", dir=left,
                        failure=self._policy_in_use.settings.failure)
        return Pipeline([Drain(self.kernel), self._decode, self._identify, *placing, *recording,
                         MakeEvents(events, self.cgroups, self.selection), self._account, self._detect,
                         self._respond, *capturing, self._dispatch])

    def _forensics_of(self, cgroup_id: int, settings: dict | None) -> None:
        """A container's forensics settings from its policy (None: it is gone)."""
        if settings is None:
            self._capture.settings_of.pop(cgroup_id, None)
        else:
            self._capture.settings_of[cgroup_id] = settings

    def _close_own_store(self) -> None:
        """The case store the sensor opened itself; a caller's stays open."""
        if self._capture is not None and not isinstance(self.cases, CaseStore):
            self._capture.capturer.store.close()

    def _load_rules(self) -> tuple[rule_loader.RuleSet, Alerts]:
        ruleset = rule_loader.load(self.rule_paths)
        for problem in ruleset.problems:
            log.error("rule rejected", problem=str(problem))
        log.info("rules loaded", rules=ruleset.loaded, rejected=len(ruleset.rejected), disabled=len(ruleset.disabled))
        return ruleset, Alerts(ruleset)

    def _apply_rules(self) -> None:
        """Decode what is emitted and what the rules need, and have the kernel capture it."""
        selection = self.selection
        if (selection.emit and selection.emit_types is None) or (self.alerts.rules and self.alerts.types is None):
            selection.decode_types = None  # every type
        else:
            selection.decode_types = (selection.emit_types or frozenset()) | (self.alerts.types or frozenset())
        known = set(self.table.syscalls) | set(OTHER_TYPES)
        capture = None if selection.decode_types is None else selection.decode_types & known
        rule_types = self.table.syscalls if self.alerts.types is None else self.alerts.types
        self._detect.alerts = self.alerts
        self._detect.rule_nrs = np.array([self.table.numbers[t] for t in rule_types if t in self.table.numbers],
                                         np.uint32)
        if capture is not None and self.alerts.reads_fds:
            capture |= FD_SYSCALLS  # captured for the fd table, not decoded
        found, covered, left_out = needles.derive(self.ruleset)
        if left_out:
            log.warning("more needles than the kernel holds: these rules can be hidden by a flood",
                        rules=left_out, kept=len(found))
        stopping, comms, kills = {}, set(), set()
        self._respond.rules = self.alerts.rules
        if self._capture is not None:  # its stage continues or kills what the kernel stops
            self._capture.rules = self.alerts.rules
            triggers, acts = self._capture.triggers, self._respond.stops
            room = layout.events().constants["MAYFLY_MAX_NEEDLES"] - len(found)
            stopping, comms, stops = needles.stopping(self.ruleset, lambda r, p: triggers(r, p) or acts(r, p), room)
            killing, kill_comms, killed = needles.stopping(self.ruleset, self._respond.kernel_kills, room)
            kills = set(killing) | kill_comms
            log.info("stopping needles: capture triggers and kill or freeze rules whose process the kernel holds "
                     "at its act", rules=stops, needles=len(stopping), process_names=len(comms),
                     killed_in_kernel=killed)
        self.kernel.set_needles(self.table, found, stopping, comms, kills)
        log.info("needles: rules whose events a flood cannot hide", rules=covered, needles=len(found))
        self.set_capture(capture)
        # With only container rules and nothing else emitted, the host's cgroups send nothing.
        self._identify.set_containers_only(self.alerts.containers_only and not selection.emit)

    def reload(self) -> None:
        """Load the rule files and the policy file again, aside, and use them from the
        next batch on; if any problem is found in either, the rules or policy in use
        stay, and the problems are logged. Safe to call from a signal handler (SIGHUP) or
        any thread; `mayfly run` also calls it when a rule or policy file changes."""
        if self._reloading is None or not self._reloading.is_alive():
            self._reloading = threading.Thread(target=self._load_aside, name="mayfly-rules", daemon=True)
            self._reloading.start()

    def _load_aside(self) -> None:
        if self.policy_path is not None:
            policy = _load_policy(self.policy_path, starting=False)
            if policy is not None:
                self._next_policy = policy
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
            host.release_free_memory()  # what compiling them left behind
            log.info("rules reloaded", rules=self.ruleset.loaded, disabled=len(self.ruleset.disabled))
        if self._next_policy is not None:
            self.policy, self._next_policy = self._next_policy, None
            self._policy_in_use = self.policy
            self._place.set_policy(self.policy)
            self._respond.set_policy(self.policy)
            self._respond.actuator.set_allowed(self.policy.settings.isolate_allow)
            self._apply_rules()  # which rules' processes the kernel stops may change
            log.info("policy reloaded", rules=len(self.policy.rules), responses=len(self.policy.responses))
        if time.monotonic() - self._stamped >= RULES_CHECK_S:
            stamps, self._stamped = _stamps(self._watched()), time.monotonic()
            if stamps != self._rule_stamps:
                self._rule_stamps = stamps
                log.info("a rule or policy file changed: reloading")
                self.reload()

    def _watched(self) -> list:
        return [*self.rule_paths, *([self.policy_path] if self.policy_path else [])]

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
        self.kernel.set_capture(self.table, set(self.captured), asked)

    def capture(self, container_id: str) -> Future:
        """Freeze a running container and capture it into a case, now, whatever its
        alerts. The future's result is the case's manifest (a thread other than the one
        that polls may wait for it); LookupError if no such container runs."""
        if self._capture is None:
            raise RuntimeError("the sensor has no case store: Sensor(cases=...)")
        future: Future = Future()
        self._capture.asked.put((container_id, future))
        return future

    def set_mode(self, mode: str | None, rule: str | None = None) -> Future:
        """Responses' mode from the next batch on (enforce, monitor, dry-run): one rule's,
        or every rule's and the placement verdicts' (rule None); None goes back to the
        policy's. Safe from any thread: the future is done once it applies."""
        if mode is not None and mode not in policy_file.MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(policy_file.MODES)}")
        return self._between_batches(lambda: self._set_mode(mode, rule))

    def _set_mode(self, mode: str | None, rule: str | None) -> None:
        if rule is not None:
            if mode is None:
                self._respond.arbiter.modes.pop(rule, None)
            else:
                self._respond.arbiter.modes[rule] = mode
        else:
            self._respond.arbiter.override = mode
            if self._place is not None:
                self._place.mode = mode
        self._apply_rules()  # which rules' processes the kernel stops or kills follows the modes
        log.info("response mode set", mode=mode or "the policy's", rule=rule or "every rule")

    def thaw(self, container_id: str) -> Future:
        """Thaw a container a response froze, from the next batch on (the future's
        exception is a LookupError if there is none). Safe from any thread."""
        return self._between_batches(lambda: self._respond.thaw(container_id))

    def _between_batches(self, change: Callable[[], None]) -> Future:
        future: Future = Future()
        self._changes.put((change, future))
        return future

    def _apply_changes(self) -> None:
        while True:
            try:
                change, future = self._changes.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(change())
            except Exception as e:  # the caller's to see
                future.set_exception(e)

    def set_rate_limit(self, rate: int, burst: int, pressure: float | None = None) -> None:
        """Events per second one cgroup may emit on average (0: no limit), and at once.
        Over its rate, a cgroup is held back only while the ring buffer is under
        pressure: `pressure` full (a fraction; 0: always; None: the config's
        ring_pressure). Forks, execs, exits and cgroup changes are never limited."""
        self.kernel.configure(rate, burst, self.config.ring_pressure if pressure is None else pressure)

    def set_policy(self, cgroup_id: int, track: bool) -> None:
        """Track a cgroup (the default) or drop its events in the kernel. Its syscalls are
        still counted."""
        self.kernel.set_policy(cgroup_id, track)

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def idle(self) -> bool:
        """Nothing unread in the ring buffer and no records held for a container's
        identity: everything the kernel committed so far has been dispatched (once the
        poll under way, if any, returns). Safe to read from any thread."""
        return (self.pipeline is not None and not self.kernel.pending() and not self.kernel.spill_pending()
                and not self._decode.spilled and not self.cgroups.pending)

    def stop(self) -> None:
        """Ask a `for record in sensor` loop to end after the current poll."""
        self._stopped = True

    def poll(self, timeout_ms: int = 100) -> list[Record]:
        """Wait up to `timeout_ms` for events; run them through the pipeline and return
        the records (dispatched to the sinks already)."""
        if self.pipeline is None:
            raise RuntimeError("the sensor is not running: use it as a context manager or call start()")
        self._swap_rules()
        self._apply_changes()
        if self.cgroups.pending:
            # A new container's runtime writes its state a few ms after its cgroup, and may
            # remove it a few ms after its exec: look again soon, not at the next event.
            timeout_ms = min(timeout_ms, PENDING_RETRY_MS)
        # A new container the gate holds, or may hold, waits for the next batch: no pause.
        hurry = self._place is not None and self._place.policy.gating and bool(
            self._place.holds.held or self.cgroups.pending)
        if self._place is not None and self._place.holds.held:
            timeout_ms = min(timeout_ms, HELD_RETRY_MS)  # its identity comes from another thread
        self.kernel.wait(timeout_ms / 1000, hurry)
        found = self.pipeline.run().records
        if time.monotonic() - self._trimmed > TRIM_EVERY_S:
            host.release_free_memory()
            self._trimmed = time.monotonic()
        return found

    def report(self) -> list[Record]:
        """Flow and syscall-count records now (they also come every `report_interval`)."""
        batch = Batch(records=self._account.periodic())
        self._dispatch.run(batch)
        return batch.records

    def close(self) -> None:
        self._stopped = True
        if self.pipeline is None:
            return
        if self._place is not None:
            self._place.close()  # nothing is left held at the gate
        self._respond.close()  # nor frozen by a response
        if self._capture is not None:
            self.kernel.disarm_stops()  # no process is held for a capture that will not come
        for _ in range(1024):  # what is still in the ring buffer (bounded: a stuck record stays)
            self.poll(0)
            if not self.kernel.pending() and not self.kernel.spill_pending() and not self._decode.spilled:
                break
        final = Batch(records=self.cgroups.flush())
        self._detect.run(final)
        if self._capture is not None:
            self._capture.capturer.close()  # the captures queued: their containers are frozen
            self._capture.run(final)
            self._capture.close()
        final.records += self._account.periodic() + self.reports.lost(final=True)
        final.records.append(records.new(
            "sensor", self.clock.now(), state="stopped", uptime_s=round(time.monotonic() - self._started, 3),
            events=dict(self._account.delivered), records=self._dispatch.records + len(final.records) + 1,
            lost=dict(self.reports.lost_totals), sinks=self._dispatch.states(),
            stages_s={name: round(ns / 1e9, 3) for name, ns in self.pipeline.busy_ns.items()},
            tables={"cgroups": len(self.cgroups.entries), "processes": len(self.processes),
                    "fd_tables": len(self.fds)},
            **({"recorder": self.recorder.sizes()} if self.recorder is not None else {})))
        self._dispatch.run(final)
        self.cgroups.stop_watching()
        self.kernel.close()
        self._close_own_store()
        self.pipeline = None
        self._dispatch.close()


def _load_policy(path: str, starting: bool) -> policy_file.Policy | None:
    """The policy file. At start its broken items are logged and the rest applies (a file
    that cannot be read at all stops the start); on reload, any problem keeps the policy
    in use (None)."""
    policy = policy_file.load(path)
    for problem in policy.problems:
        log.error("policy problem", problem=str(problem))
    if starting and any(p.line == 0 for p in policy.problems):
        raise ValueError(f"policy file {policy.problems[0]}")
    if not starting and policy.problems:
        log.error("policy not reloaded: the policy in use stays", problems=len(policy.problems))
        return None
    log.info("policy loaded", path=path, rules=len(policy.rules), responses=len(policy.responses),
             gate=policy.gating, problems=len(policy.problems))
    return policy


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

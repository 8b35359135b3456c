"""The policy stage, after identity: each container whose identity is known gets its
verdict, as a `policy` record, and the kernel holds it (`verdicts`): allowed, or denied
(every exec there is killed, and the container with cgroup.kill). A container the spawn
gate holds is released or killed at once; one held past the deadline, or found held by
a sensor that crashed, ends as the failure mode says."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sensor import records
from sensor.identity.cgroups import CgroupTable
from sensor.identity.stage import cgroup_changes
from sensor.kernel import layout
from sensor.kernel.clock import MonotonicClock
from sensor.kernel.control import Kernel
from sensor.log import get_logger
from sensor.policy.decide import Verdict, decide
from sensor.policy.gate import Holds
from sensor.policy.host_facts import HostFacts
from sensor.policy.policy_file import Policy
from sensor.policy.workload import running, workload_of

if TYPE_CHECKING:
    from sensor.pipeline import Batch

log = get_logger("policy")


class Place:
    name = "policy"

    def __init__(self, kernel: Kernel, cgroups: CgroupTable, clock: MonotonicClock, policy: Policy,
                 facts: HostFacts, mkdir: int, on_forensics: Callable[[int, dict | None], None] | None = None):
        self.kernel, self.cgroups, self.clock, self.facts, self.mkdir = kernel, cgroups, clock, facts, mkdir
        constants = layout.events().constants
        self.holds = Holds(kernel, constants["MAYFLY_SYSCALL_GATED"])
        self.on_forensics = on_forensics
        self.decided: dict[int, Verdict] = {}  # live cgroup id -> its verdict
        self.denied: set[int] = set()          # ...those the kernel holds denied
        self.mode: str | None = None           # set at run time (Sensor.set_mode), over the policy's
        self.policy = policy
        self.facts.labels = dict(policy.host_labels)
        self._armed = False

    def arm(self) -> None:
        """The gate on, as the policy asks: once the host's cgroups are known to the kernel
        and the containers already running have their verdicts."""
        self._armed = True
        self.kernel.set_gate(self.policy.gating)

    def set_policy(self, policy: Policy) -> None:
        """A policy for containers from now on (verdicts given stay)."""
        self.policy = policy
        self.facts.labels = dict(policy.host_labels)
        if self._armed:
            self.kernel.set_gate(policy.gating)

    @property
    def effective_mode(self) -> str:
        return self.mode or self.policy.settings.mode

    def run(self, batch: Batch) -> None:
        self.holds.note(batch.arrays.get("syscall", ()))
        decided = []
        for record in batch.records:
            if record["kind"] == "container" and record.get("state") == "start":
                decided.append(self._decide(record["container"], existing=bool(record.get("existing"))))
        batch.records += [r for r in decided if r is not None]
        self._held(batch)
        for cgroup_id, _, _ in cgroup_changes(batch.arrays, self.mkdir, self.clock, removals=True):
            self.decided.pop(cgroup_id, None)
            self.denied.discard(cgroup_id)
            self.kernel.set_verdict(cgroup_id, None)
            if self.on_forensics is not None:
                self.on_forensics(cgroup_id, None)

    def _decide(self, container: dict, existing: bool):
        cgroup_id = container.get("cgroup_id")
        if cgroup_id is None or cgroup_id in self.decided:
            return None
        settings = self.policy.settings
        workload = workload_of(container, settings.workload)
        verdict = decide(self.policy, container,
                         self.facts.of(container, running(self.cgroups, workload, settings.workload)))
        self.decided[cgroup_id] = verdict
        if self.on_forensics is not None and verdict.forensics is not None:
            self.on_forensics(cgroup_id, verdict.forensics.as_record())
        enforce = self.effective_mode == "enforce"
        deny = verdict.verdict == "deny" and enforce
        self.kernel.set_verdict(cgroup_id, "deny" if deny else "allow")
        if deny:
            self.denied.add(cgroup_id)
        held_since = self.holds.since(cgroup_id)
        if deny:
            outcome = self.holds.kill(cgroup_id, self.cgroups.directory(cgroup_id))
        else:
            released = self.holds.release(cgroup_id)
            outcome = "released" if released else "running"
            if verdict.verdict == "deny":
                outcome += f" ({self.effective_mode}: would kill)"
        return self._record(container, verdict, outcome, held_since, existing)

    def _held(self, batch: Batch) -> None:
        """Holds of cgroups that are the host's, or decided already; then the overdue, and
        what the kernel holds with no event here."""
        settings = self.policy.settings
        for cgroup_id in list(self.holds.held):
            entry = self.cgroups.entries.get(cgroup_id)
            if entry is not None and entry.pending_until is None and not entry.identity.is_container:
                self.holds.release(cgroup_id)  # a new cgroup of the host's: never gated
                self.kernel.set_verdict(cgroup_id, "allow")
            elif cgroup_id in self.decided:
                if cgroup_id in self.denied:
                    self.holds.kill(cgroup_id, self.cgroups.directory(cgroup_id))
                else:
                    self.holds.release(cgroup_id)
        fail_open = settings.failure == "open"
        for cgroup_id in self.holds.overdue(settings.gate_deadline_s):
            held_since = self.holds.since(cgroup_id)
            if fail_open:
                self.holds.release(cgroup_id)
                outcome = "released"
            else:
                outcome = self.holds.kill(cgroup_id, self.cgroups.directory(cgroup_id))
            self.kernel.set_verdict(cgroup_id, "allow" if fail_open else "deny")
            if not fail_open:
                self.denied.add(cgroup_id)
            verdict = Verdict("allow" if fail_open else "deny", None,
                              f"no verdict within the gate's deadline ({settings.gate_deadline_s} s): "
                              f"failed {settings.failure}", False, None, ())
            self.decided[cgroup_id] = verdict
            batch.records.append(self._record(self.cgroups.container(cgroup_id), verdict, outcome, held_since,
                                              False, failed=settings.failure))
        for pid, cgroup_id in self.holds.sweep(settings.gate_deadline_s, fail_open):
            log.warning("a process the gate held had no verdict: ended as the failure mode says", pid=pid,
                        cgroup_id=cgroup_id, failure=settings.failure)
            batch.records.append(records.new(
                "policy", self.clock.now(), container=self.cgroups.container(cgroup_id), verdict=None, rule=None,
                why=f"held with no event here (lost, or held by a sensor that stopped): failed {settings.failure}",
                outcome="released" if fail_open else "killed", pid=pid, failed=settings.failure))

    def _record(self, container: dict, verdict: Verdict, outcome: str, held_since: int | None, existing: bool,
                failed: str | None = None):
        gate = {"held": held_since is not None}
        if held_since is not None:
            gate["verdict_ms"] = round((time.monotonic_ns() - held_since) / 1e6, 3)
        extra = {"failed": failed} if failed else {}
        return records.new("policy", self.clock.now(), container=container, **verdict.as_record(), outcome=outcome,
                           mode=self.effective_mode, gate=gate, existing=existing, **extra)

    def close(self) -> None:
        """The sensor stops: the gate holds nothing more, and what it holds ends as the
        failure mode says."""
        self.kernel.set_gate(False)
        self.holds.end_all(self.policy.settings.failure == "open", self.cgroups.directory)


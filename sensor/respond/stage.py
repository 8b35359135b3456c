"""The respond stage, after detect: each alert's actions (its rule's `actions:` list,
and the policy's responses that match its rule, tags or priority), weighed by the
arbiter, done in the rule's mode, each told in an `action` record with its trigger,
target, outcome, latency from the triggering event, and any downgrade."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sensor import records
from sensor.detect.evaluate import evaluate
from sensor.identity.cgroups import CgroupTable
from sensor.identity.stage import cgroup_changes
from sensor.kernel.clock import MonotonicClock
from sensor.log import get_logger
from sensor.policy.policy_file import Policy
from sensor.policy.workload import running, workload_of
from sensor.respond.actions import Actuator
from sensor.respond.arbiter import DESTRUCTIVE, Arbiter

if TYPE_CHECKING:
    from sensor.pipeline import Batch
    from sensor.records import Record

log = get_logger("respond")


class Respond:
    name = "respond"

    def __init__(self, actuator: Actuator, policy: Policy, cgroups: CgroupTable, clock: MonotonicClock, mkdir: int,
                 own_cgroup: int, capture: Callable[[Record, Batch], str] | None = None):
        self.actuator, self.cgroups, self.clock, self.mkdir = actuator, cgroups, clock, mkdir
        self.kernel = actuator.kernel
        self.own_cgroup = own_cgroup
        self.capture = capture  # hands an alert's container to the capture (forensics); the outcome
        self.rules: dict = {}   # the loaded rules by name (Alerts.rules), for their `actions`
        self.policy = policy
        self.arbiter = Arbiter(policy.settings)
        self._done: dict[int, set[str]] = {}  # live cgroup id -> actions done to it
        self._shielded: set[int] = set()      # protected containers, where the kernel never stops or kills

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.arbiter.settings = policy.settings

    def asked(self, rule: str, tags, priority: str) -> tuple[tuple[str, ...], str | None]:
        """The actions an alert of this rule asks for, and the mode its response sets."""
        item = self.rules.get(rule)
        actions = list(item.body.get("actions") or []) if item is not None else []
        mode = None
        for response in self.policy.responses:
            if response.matches(rule, tags, priority):
                actions += response.actions
                mode = mode or response.mode
        return tuple(dict.fromkeys(actions)), mode

    def stops(self, rule: str, priority: str) -> bool:
        """Whether the kernel should hold this rule's process at its act, for an action
        that must come before its next step (a kill or a freeze, in enforce mode)."""
        item = self.rules.get(rule)
        actions, mode = self.asked(rule, item.body.get("tags") if item is not None else (), priority)
        return self.arbiter.mode(rule, mode) == "enforce" and bool(set(actions) & {*DESTRUCTIVE, "freeze"})

    def kernel_kills(self, rule: str, priority: str) -> bool:
        """Whether the kernel kills this rule's process alone, at its act (the policy's
        kernel_kill, a kill_process rule in enforce mode): no arbitration, line rate."""
        item = self.rules.get(rule)
        actions, mode = self.asked(rule, item.body.get("tags") if item is not None else (), priority)
        return (self.policy.settings.kernel_kill and "kill_process" in actions
                and self.arbiter.mode(rule, mode) == "enforce")

    def run(self, batch: Batch) -> None:
        for record in batch.records:
            if record["kind"] == "container" and record.get("state") == "start" and self._protected(record["container"]):
                cgroup_id = record["container"]["cgroup_id"]
                self.kernel.mark_host(cgroup_id, True)  # no stopping or killing needle acts there
                self._shielded.add(cgroup_id)
        for alert in [r for r in batch.records if r["kind"] == "alert"]:
            actions, mode = self.asked(alert["rule"], alert.get("tags"), alert["priority"])
            if actions:
                batch.records += self._respond(alert, actions, mode, batch)
        for cgroup_id, _, _ in cgroup_changes(batch.arrays, self.mkdir, self.clock, removals=True):
            self._done.pop(cgroup_id, None)
            self.actuator.gone(cgroup_id)
            if cgroup_id in self._shielded:
                self._shielded.discard(cgroup_id)
                self.kernel.mark_host(cgroup_id, False)

    def _respond(self, alert: Record, asked: tuple[str, ...], asked_mode: str | None, batch: Batch) -> list[Record]:
        container = alert.get("container") or {}
        cgroup_id = container.get("cgroup_id")
        entry = self.cgroups.entries.get(cgroup_id)
        pid = (alert.get("proc") or {}).get("pid")
        rule = alert["rule"]
        mode = self.arbiter.mode(rule, asked_mode)
        base = {"container": container, "pid": pid}
        trigger = {k: alert.get(k) for k in ("rule", "priority", "ts", "output")}
        trigger["proc"] = {k: (alert.get("proc") or {}).get(k) for k in ("pid", "comm", "exe")}

        def record(action: str, outcome: str, in_kernel: bool = False, **more) -> Record:
            latency = 0 if in_kernel else (time.monotonic_ns() - (int(alert["ts"]) - self.clock.offset)) / 1e6
            return records.new("action", self.clock.now(), action=action, target=base, trigger=trigger,
                               outcome=outcome, mode=mode, latency_ms=round(latency, 3), **more)

        if entry is None or not entry.identity.is_container:
            return [record(a, "skipped: not a container (the host is never a target)") for a in asked]
        if self._protected(container):
            why = "the sensor's own" if cgroup_id == self.own_cgroup else "protected by the policy"
            return [record(a, f"skipped: {why}") for a in asked]
        out = []
        if "kill_process" in asked and (alert.get("evt") or {}).get("killed"):
            out.append(record("kill_process", "done in the kernel", in_kernel=True))  # the policy's kernel_kill: unweighed
            asked = tuple(a for a in asked if a != "kill_process")
        if mode == "monitor":
            return out + [record(a, "monitor: not done") for a in asked]
        workload = workload_of(container, self.policy.settings.workload)
        weighed = self.arbiter.weigh(rule, asked, workload,
                                     running(self.cgroups, workload, self.policy.settings.workload))
        if weighed.disarmed:
            s = self.policy.settings
            out.append(records.new("action", self.clock.now(), action="disarm", target={"rule": rule},
                                   trigger=trigger, outcome="done", mode="monitor", latency_ms=0.0,
                                   why=f"rule {rule} hit more than {s.disarm_workloads} distinct workloads within "
                                       f"{s.disarm_window_s:g} s: switched to monitor"))
            return out + [record(a, "monitor: not done (the rule was disarmed)") for a in asked]
        extra = {"downgraded": weighed.downgraded} if weighed.downgraded else {}
        done = self._done.setdefault(cgroup_id, set())
        cgroup_dir = self.cgroups.directory(cgroup_id)
        for action in weighed.actions:
            if action in done and action != "kill_process":
                outcome = "done already"
            elif mode == "dry-run":
                outcome = "dry-run: not done"
            elif action == "capture":
                outcome = self.capture(alert, batch) if self.capture else "failed: the sensor keeps no cases"
            else:
                outcome = self.actuator.do(action, cgroup_id, cgroup_dir, pid)
            if outcome == "done":
                done.add(action)
                if action == "kill_container":
                    batch.killed.add(cgroup_id)
            out.append(record(action, outcome, **extra))
        if not weighed.actions and asked:
            out.append(record("alert", "alert only", **extra))
        return out

    def _protected(self, container: dict) -> bool:
        """The sensor's own container, and those a `protect` item names: never targets."""
        return container.get("cgroup_id") == self.own_cgroup or any(
            evaluate(p.condition, {"container": container}) for p in self.policy.protect)

    def thaw(self, container_id: str) -> None:
        """Thaw a container a response froze; LookupError if there is none."""
        for cgroup_id, cgroup_dir in list(self.actuator.frozen.items()):
            entry = self.cgroups.entries.get(cgroup_id)
            if entry is not None and entry.container.get("id") == container_id:
                self.actuator.thaw(cgroup_id, cgroup_dir)
                self._done.get(cgroup_id, set()).discard("freeze")
                return
        raise LookupError(f"no container {container_id!r} frozen by a response")

    def close(self) -> None:
        self.actuator.release_all(self.policy.settings.failure == "open")

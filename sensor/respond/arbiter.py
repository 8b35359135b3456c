"""Security weighed against availability, before any destructive action: each rule's
mode, kill budgets per workload with their ladder, the last-instance guard, and the
disarmer for a rule that hits too many workloads (docs/policy.md)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from sensor.policy.policy_file import Settings

DESTRUCTIVE = ("kill_process", "kill_container")
CONTAIN = ("isolate", "freeze")  # the ladder's first step down


@dataclass(frozen=True)
class Weighed:
    actions: tuple[str, ...]     # what to do now
    downgraded: dict | None      # {"from", "to", "why"} when not what was asked
    disarmed: bool = False       # this call switched the rule to monitor


class Arbiter:
    def __init__(self, settings: Settings, clock=time.monotonic):
        self.settings = settings
        self.clock = clock
        self.modes: dict[str, str] = {}                     # rule -> mode set at run time (or by the disarmer)
        self.override: str | None = None                    # every rule's mode, set at run time
        self._kills: dict[str, deque[float]] = {}           # workload -> when destructive actions were asked
        self._hits: dict[str, dict[str, float]] = {}        # rule -> workload -> last destructive hit

    def mode(self, rule: str, asked: str | None) -> str:
        """A rule's mode: set at run time for it, else for all, else its response's, else
        the policy's."""
        return self.modes.get(rule) or self.override or asked or self.settings.mode

    def weigh(self, rule: str, actions: tuple[str, ...], workload: str, running: int) -> Weighed:
        """The actions to take for one alert. `running`: containers of the workload on
        this host now, the target included."""
        destructive = [a for a in actions if a in DESTRUCTIVE]
        if not destructive:
            return Weighed(actions, None)
        now, s = self.clock(), self.settings
        disarmed = self._disarm(rule, workload, now)
        kills = self._kills.setdefault(workload, deque())
        while kills and now - kills[0] > s.budget_window_s:
            kills.popleft()
        kills.append(now)
        rest = tuple(a for a in actions if a not in DESTRUCTIVE)
        contained = tuple(dict.fromkeys((*CONTAIN, *rest)))
        if len(kills) > 2 * s.kill_budget:
            why = (f"kill budget spent twice over: {len(kills)} destructive actions on workload {workload} within "
                   f"{s.budget_window_s:g} s (budget {s.kill_budget}); alert only")
            return Weighed(tuple(a for a in rest if a == "capture"), _down(actions, ("alert",), why), disarmed)
        if len(kills) > s.kill_budget:
            why = (f"kill budget spent: {len(kills)} destructive actions on workload {workload} within "
                   f"{s.budget_window_s:g} s (budget {s.kill_budget}); isolate and freeze instead")
            return Weighed(contained, _down(actions, contained, why), disarmed)
        if "kill_container" in destructive and running - 1 < s.min_instances:
            why = (f"last-instance guard: killing it would leave {running - 1} running container(s) of workload "
                   f"{workload} on this host, below the minimum of {s.min_instances}; isolate and freeze instead")
            return Weighed(contained, _down(actions, contained, why), disarmed)
        return Weighed(actions, None, disarmed)

    def _disarm(self, rule: str, workload: str, now: float) -> bool:
        """A destructive rule that hit more distinct workloads than allowed within the
        window goes to monitor. Whether this hit did it."""
        hits = self._hits.setdefault(rule, {})
        hits[workload] = now
        for name, when in list(hits.items()):
            if now - when > self.settings.disarm_window_s:
                del hits[name]
        if len(hits) > self.settings.disarm_workloads and self.modes.get(rule) != "monitor":
            self.modes[rule] = "monitor"
            return True
        return False


def _down(asked: tuple[str, ...], to: tuple[str, ...], why: str) -> dict:
    return {"from": list(asked), "to": list(to), "why": why}

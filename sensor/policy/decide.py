"""A container's verdict under a policy: its identity (as records carry it) and this
host's facts, against the policy rules, in the policy's order."""

from __future__ import annotations

from dataclasses import dataclass

from sensor.detect.evaluate import evaluate
from sensor.policy.policy_file import VERDICTS, Forensics, Policy


@dataclass(frozen=True)
class Verdict:
    verdict: str                 # allow, alert or deny
    rule: str | None             # the policy rule that decided it; None: the default
    why: str
    gated: bool                  # a matching rule asks for the gate
    forensics: Forensics | None  # the forensics settings its containers get
    matched: tuple[str, ...]     # every policy rule that matched, in order

    def as_record(self) -> dict:
        result = {"verdict": self.verdict, "rule": self.rule, "why": self.why, "matched": list(self.matched)}
        if self.forensics is not None:
            result["forensics"] = self.forensics.as_record()
        return result


def decide(policy: Policy, container: dict, host: dict) -> Verdict:
    """`host`: this host's facts and live state (sensor.policy.host_facts)."""
    subject = {"container": container, "host": host}
    matching = [rule for rule in policy.rules if evaluate(rule.condition, subject)]
    if not matching:
        default = policy.settings.default
        return Verdict(default, None, f"no policy rule matched: the default verdict ({default})", False, None, ())
    if policy.settings.order == "strictest":
        decider = max(matching, key=lambda rule: VERDICTS.index(rule.verdict))  # the first of the most severe
    else:
        decider = matching[0]
    forensics = decider.forensics or next((r.forensics for r in matching if r.forensics), None)
    return Verdict(decider.verdict, decider.name, f"{decider.name} ({decider.path}:{decider.line}): "
                   f"{' '.join(decider.text.split())}", any(r.gate for r in matching), forensics,
                   tuple(r.name for r in matching))

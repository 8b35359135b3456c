"""What a case is worth keeping: its value score, from its severity, its novelty among
the cases kept, its age and its retention class, and how long it may live (docs/cases.md).

The parts are kept in the case's manifest, so that a person can see why a case was
kept or let go. A locked case is never let go, whatever its score.
"""

from __future__ import annotations

from dataclasses import dataclass

from sensor.detect.rule_loader import PRIORITIES

DAY_S = 86400.0
HALF_LIFE_S = 7 * DAY_S  # a case's worth halves every week
# How long a case of each priority may live, locked ones apart.
TTL_S = {**dict.fromkeys(PRIORITIES[:3], 90 * DAY_S),    # EMERGENCY, ALERT, CRITICAL
         **dict.fromkeys(PRIORITIES[3:5], 30 * DAY_S),   # ERROR, WARNING
         **dict.fromkeys(PRIORITIES[5:], 7 * DAY_S)}     # NOTICE and below
NO_PRIORITY = "NONE"  # a case asked for by hand (Sensor.capture), with no alert behind it
TTL_S[NO_PRIORITY] = 30 * DAY_S


def severity(priority: str) -> float:
    """EMERGENCY 1.0 down to DEBUG 1/8; a case with no alert behind it counts as WARNING."""
    index = PRIORITIES.index(priority) if priority in PRIORITIES else PRIORITIES.index("WARNING")
    return (len(PRIORITIES) - index) / len(PRIORITIES)


def similarity_key(rule: str, image: str, exe_sha256: str) -> str:
    """Cases alike: the same rule, on the same image, by the same executable."""
    return f"{rule}\x1f{image}\x1f{exe_sha256}"


@dataclass(frozen=True)
class Value:
    """A case's score parts, fixed when it is opened; its age is applied when scored."""
    severity: float
    similar: int           # cases alike already kept when it was opened
    weight: float = 1.0    # its retention class's (the policy issue sets it; 1 by default)

    @property
    def novelty(self) -> float:
        """1 for the first of its kind, 1/50 for the fiftieth."""
        return 1.0 / (1 + self.similar)

    def score(self, age_s: float) -> float:
        return self.weight * self.severity * self.novelty * 0.5 ** (max(age_s, 0.0) / HALF_LIFE_S)

    def explain(self, age_s: float) -> dict:
        return {"score": self.score(age_s), "severity": self.severity, "novelty": self.novelty,
                "similar": self.similar, "weight": self.weight, "age_s": age_s, "half_life_s": HALF_LIFE_S}

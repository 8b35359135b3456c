"""Sequence and rate rules: what one event cannot show, kept per container.

A sequence rule is ordered steps, each a condition, that must all match within a time
window, in order, for the same key (the container, the process, or a field's value), and
optionally for the same value of a field per step (`same`: a file written, made
executable, then executed, by path). A rate rule counts the events that match a
condition per key over a sliding window, or the distinct values of a field among them,
and fires when the count reaches a threshold (then starts counting again).

The engine (sensor.detect.engine) matches each step's and each rate's condition like any
rule's; this module keeps the state those matches build. State is bounded: keys per
rule (the least recent go first), partial sequences per key, events per rate window;
and a container's state is dropped when it exits.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from dataclasses import dataclass

from sensor.detect import fields

MAX_KEYS = 4096       # per rule
MAX_PARTIALS = 64     # partial sequences per key
MAX_RATE_EVENTS = 4096  # events kept per rate window
KEPT_EVENTS = 16      # contributing events an alert of a rate rule carries (the last ones)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 1e6, "s": 1e9, None: 1e9, "m": 60e9, "h": 3600e9, "d": 86400e9}


def duration_ns(text) -> int:
    """'30s', '500ms', '2m', '1h', '90d' or a number of seconds, in ns."""
    found = _DURATION.match(str(text))
    if not found:
        raise ValueError(f"not a duration: {text!r} (say 30s, 500ms, 2m, 90d)")
    return int(float(found[1]) * _UNITS[found[2]])


@dataclass(frozen=True)
class Step:
    condition: object
    same: str | None = None  # a field whose value every step must share


@dataclass(frozen=True)
class Sequence:
    steps: tuple[Step, ...]
    within_ns: int
    by: str = "container"  # container, process, or a field name


@dataclass(frozen=True)
class Rate:
    condition: object
    window_ns: int
    threshold: int
    by: str = "container"
    distinct: str | None = None  # count distinct values of this field instead of events


def key_of(by: str, record: dict) -> tuple:
    """What a rule correlates on; always within one container."""
    container = (record.get("container") or {}).get("id")
    if by == "container":
        return (container,)
    if by == "process":
        return container, (record.get("proc") or {}).get("pid")
    return container, fields.value(by, record)


class Correlator:
    """The state of sequence and rate rules. feed() an event that matched a step or a
    rate condition; it returns the events of a completed sequence or a reached rate."""

    def __init__(self, sequences: dict[str, Sequence], rates: dict[str, Rate]):
        self.sequences, self.rates = sequences, rates
        # rule -> key -> partial sequences (next step, same-value, events) / rate window
        self._partials: dict[str, OrderedDict] = {name: OrderedDict() for name in sequences}
        self._windows: dict[str, OrderedDict] = {name: OrderedDict() for name in rates}

    def feed_step(self, rule: str, step: int, event: dict) -> list[dict] | None:
        spec = self.sequences[rule]
        key = key_of(spec.by, event)
        same = fields.value(spec.steps[step].same, event) if spec.steps[step].same else None
        partials = _entry(self._partials[rule], key, list)
        ts = event["ts"]
        partials[:] = [p for p in partials if ts - p[2][0]["ts"] <= spec.within_ns]  # expired ones go
        completed = None
        advanced = []
        for next_step, value, events in partials:
            if next_step == step and (same is None or value == same) and ts >= events[-1]["ts"]:
                if step == len(spec.steps) - 1:
                    completed = completed or events + [event]
                else:
                    advanced.append((step + 1, value, events + [event]))
        if step == 0 and len(spec.steps) > 1:
            advanced.append((1, same, [event]))
        elif step == 0:
            completed = [event]
        partials.extend(advanced)
        del partials[:-MAX_PARTIALS]
        if completed:
            partials.clear()
        return completed

    def feed_rate(self, rule: str, event: dict) -> list[dict] | None:
        spec = self.rates[rule]
        window = _entry(self._windows[rule], key_of(spec.by, event), deque)
        window.append((event["ts"], fields.value(spec.distinct, event) if spec.distinct else None, event))
        while window and event["ts"] - window[0][0] > spec.window_ns or len(window) > MAX_RATE_EVENTS:
            window.popleft()
        count = len({v for _, v, _ in window if v is not None}) if spec.distinct else len(window)
        if count < spec.threshold:
            return None
        events = [e for _, _, e in window][-KEPT_EVENTS:]
        window.clear()
        return events

    def forget(self, container_id: str) -> None:
        """A container exited: its state goes."""
        for states in (*self._partials.values(), *self._windows.values()):
            for key in [k for k in states if k[0] == container_id]:
                del states[key]


def _entry(states: OrderedDict, key: tuple, new):
    state = states.get(key)
    if state is None:
        state = states[key] = new()
        while len(states) > MAX_KEYS:
            states.popitem(last=False)
    states.move_to_end(key)
    return state

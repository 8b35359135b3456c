"""Alerts: loaded rules matched against `event` records by the engine, each match an
`alert` record with the rule's rendered output, the event, its process lineage and its
container."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sensor import records
from sensor.detect import fields
from sensor.detect.condition import FIELD, And, Check, Not, checks
from sensor.detect.condition import fields as fields_of
from sensor.detect.correlate import Correlator
from sensor.detect.domains import DOMAINS
from sensor.detect.engine import Engine, rule_types
from sensor.records import Record
from sensor.detect.rows import Rows
from sensor.detect.rule_loader import RuleSet

MISSING = "<NA>"  # how Falco renders a field the event does not have
RATE = -1  # the part of a rate rule the engine matches
_TEMPLATE = re.compile(rf"%({FIELD.pattern})")


def render(template: str, record: Record) -> str:
    """A rule's output with each %field replaced by the record's value."""
    def value(match) -> str:
        got = fields.value(match[1], record)
        if got is None or got == ():
            return MISSING
        return ",".join(map(str, got)) if isinstance(got, tuple) else str(got)
    return _TEMPLATE.sub(value, template)


def in_containers(node) -> bool:
    """Whether a condition can only be true in a container (it requires container.id !=
    host at its top level, as Falco's `container` macro does)."""
    if isinstance(node, And):
        return any(in_containers(item) for item in node.items)
    return node in (Check("container.id", "!=", "host"), Not(Check("container.id", "=", "host")))


class Alerts:
    """The enabled rules of a rule set, compiled once: plain rules alert on one event;
    the steps of sequence rules and the conditions of rate rules are matched by the same
    engine and feed their state (sensor.detect.correlate)."""

    def __init__(self, ruleset: RuleSet):
        loaded = set(ruleset.conditions) | set(ruleset.sequences) | set(ruleset.rates)
        self.rules = {item.name: item for item in ruleset.rules if item.name in loaded}
        conditions = dict(ruleset.conditions)
        self._parts: dict[str, tuple[str, int | None]] = {name: (name, None) for name in conditions}
        for name, sequence in ruleset.sequences.items():
            for step, spec in enumerate(sequence.steps):
                conditions[f"{name}\0{step}"] = spec.condition
                self._parts[f"{name}\0{step}"] = (name, step)
        for name, rate in ruleset.rates.items():
            conditions[f"{name}\0rate"] = rate.condition
            self._parts[f"{name}\0rate"] = (name, RATE)
        self.engine = Engine(conditions)
        self.correlator = Correlator(ruleset.sequences, ruleset.rates)
        # Domain names rules compare addresses with are resolved from now on.
        DOMAINS.watch(value for c in conditions.values() for check in checks(c)
                      if check.field.endswith("ip.name") and check.value is not None
                      for value in (check.value if isinstance(check.value, tuple) else (check.value,)))
        # Only container rules: the host's events need not leave the kernel.
        self.containers_only = bool(conditions) and all(in_containers(c) for c in conditions.values())
        # Rules that read fd.* need the fd table, which learns from the fd syscalls.
        self.reads_fds = any(name.startswith("fd.") for c in conditions.values() for name in fields_of(c))
        # The event types the rules need (None: any type can match some rule).
        self.types = rule_types(conditions.values())

    def __call__(self, batch: Sequence[Record], rows: Sequence[Rows] = (), seen: Sequence[Record] = ()) -> list[Record]:
        """The alerts of a batch: of its event records but those in `seen`, and of `rows`
        (syscall arrays, matched by the engine straight from them: `seen` are records of
        theirs). A container that exits in the batch is forgotten."""
        skip = set(map(id, seen))
        events = [record for record in batch if record["kind"] == "event" and id(record) not in skip]
        found = [(events[i], name) for i, name in self.engine.match(events)]
        names = self.engine.program.names
        found += [(rows[a].record(i), names[r]) for a, i, r in self.engine.match_rows(rows).tolist()]
        found.sort(key=lambda match: match[0]["ts"])  # stable: an event's rules stay in rule order
        matched: dict[int, tuple[Record, list[tuple[str, int | None]]]] = {}
        for record, name in found:
            matched.setdefault(id(record), (record, []))[1].append(self._parts[name])
        alerts = []
        for event, parts in matched.values():
            # An event that matches several steps counts for the last one it can finish.
            for rule, part in sorted(parts, key=lambda p: -1 if p[1] is None else -p[1]):
                if part is None:
                    alerts.append(self._alert(rule, event))
                    continue
                found_events = self.correlator.feed_rate(rule, event) if part == RATE else \
                    self.correlator.feed_step(rule, part, event)
                if found_events:
                    alerts.append(self._alert(rule, event, found_events))
        for record in batch:
            if record["kind"] == "container" and record.get("state") == "exit":
                self.correlator.forget(record["container"]["id"])
        return alerts

    def _alert(self, name: str, event: Record, contributing: list[Record] | None = None) -> Record:
        rule = self.rules[name].body
        alert = records.new(
            "alert", event["ts"], rule=name, priority=str(rule.get("priority", "")).upper(),
            tags=[str(t) for t in rule.get("tags") or ()], output=render(str(rule.get("output", "")), event),
            source_file=self.rules[name].path, container=event.get("container"), proc=event.get("proc"),
            evt=event.get("evt"))
        if contributing is not None:
            alert["events"] = [{"ts": e["ts"], "proc": e.get("proc"), "evt": e.get("evt")} for e in contributing]
        return alert

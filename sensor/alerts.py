"""Alerts: loaded rules matched against `event` records by the engine, each match an
`alert` record with the rule's rendered output, the event, its process lineage and its
container."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sensor import fields, records
from sensor.condition import FIELD, checks
from sensor.domains import DOMAINS
from sensor.engine import Engine, event_types
from sensor.records import Record
from sensor.rule_loader import RuleSet

MISSING = "<NA>"  # how Falco renders a field the event does not have
_TEMPLATE = re.compile(rf"%({FIELD.pattern})")


def render(template: str, record: Record) -> str:
    """A rule's output with each %field replaced by the record's value."""
    def value(match) -> str:
        found = fields.lookup(match[1])
        got = found[0].get(record, found[1]) if found else None
        if got is None or got == ():
            return MISSING
        return ",".join(map(str, got)) if isinstance(got, tuple) else str(got)
    return _TEMPLATE.sub(value, template)


class Alerts:
    """The enabled rules of a rule set, compiled once."""

    def __init__(self, ruleset: RuleSet):
        self.rules = {item.name: item for item in ruleset.rules if item.name in ruleset.conditions}
        self.engine = Engine(ruleset.conditions)
        # Domain names rules compare addresses with are resolved from now on.
        DOMAINS.watch(value for c in ruleset.conditions.values() for check in checks(c)
                      if check.field.endswith("ip.name") and check.value is not None
                      for value in (check.value if isinstance(check.value, tuple) else (check.value,)))
        types = [event_types(c) for c in ruleset.conditions.values()]
        # The event types the rules need (None: any type can match some rule).
        self.types: frozenset[str] | None = None if any(t is None for t in types) else frozenset().union(*types)

    def __call__(self, events: Sequence[Record]) -> list[Record]:
        alerts = []
        for i, name in self.engine.match(events):
            event, rule = events[i], self.rules[name].body
            alerts.append(records.new(
                "alert", event["ts"], rule=name, priority=str(rule.get("priority", "")).upper(),
                tags=[str(t) for t in rule.get("tags") or ()], output=render(str(rule.get("output", "")), event),
                source_file=self.rules[name].path, container=event.get("container"), proc=event.get("proc"),
                evt=event.get("evt")))
        return alerts

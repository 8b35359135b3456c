"""The reference evaluator: an expanded condition (sensor.detect.condition) against one record,
with Falco's operator semantics, in plain Python, one record per call. It is the
definition a compiled engine is checked against.

A field the record does not have makes every check on it false (`exists` included),
as in Falco; `not` still inverts that. Numbers compare as numbers when the field is
numeric. A field with several values (`proc.aname` without an index) matches when any
of them does.
"""

from __future__ import annotations

import ipaddress
import operator
from fnmatch import fnmatchcase

from sensor.detect import fields
from sensor.detect.condition import And, Check, Not, Or

UNSUPPORTED_OPERATORS = {"regex", "bcontains", "bstartswith"}
_ORDER = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def evaluate(node, record: dict) -> bool:
    if isinstance(node, And):
        return all(evaluate(item, record) for item in node.items)
    if isinstance(node, Or):
        return any(evaluate(item, record) for item in node.items)
    if isinstance(node, Not):
        return not evaluate(node.item, record)
    return _check(node, record)


def field_of(name: str) -> tuple[fields.Field, str | None]:
    found = fields.lookup(name)
    if found is None:
        raise ValueError(f"field {name} is not provided by Mayfly")
    return found


def _check(check: Check, record: dict) -> bool:
    field, index = field_of(check.field)
    return check_value(check, field, field.get(record, index))


def check_value(check: Check, field: fields.Field, value) -> bool:
    """One check against the value its field has: all that the result depends on."""
    if value is None or value == ():
        return False
    if check.op == "exists":
        return True
    values = value if isinstance(value, tuple) else (value,)
    compare = _in_network if field.network else _compare
    if check.op == "!=":
        return not any(compare(v, "=", check.value) for v in values)
    return any(compare(v, check.op, check.value) for v in values)


def _in_network(address, op: str, expected) -> bool:
    """An address against one network (=) or several (in)."""
    networks = expected if isinstance(expected, tuple) else (expected,)
    if op not in ("=", "in"):
        raise ValueError(f"operator {op} does not apply to networks")
    try:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)
    except ValueError:
        return False


def _number(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _compare(value, op: str, expected) -> bool:
    if isinstance(value, int):
        if isinstance(expected, tuple):
            return value in {_number(e) for e in expected}
        if op not in _ORDER:
            return _compare(str(value), op, expected)  # contains, startswith... on the number's text
        number = _number(expected)
        return number is not None and _ORDER[op](value, number)
    value = str(value)
    if op == "=":
        return value == expected
    if op in ("<", "<=", ">", ">="):
        number = _number(value)
        return number is not None and _compare(number, op, expected)
    if op == "contains":
        return expected in value
    if op == "icontains":
        return expected.lower() in value.lower()
    if op == "startswith":
        return value.startswith(expected)
    if op == "endswith":
        return value.endswith(expected)
    if op == "glob":
        return fnmatchcase(value, expected)
    if op == "iglob":
        return fnmatchcase(value.lower(), expected.lower())
    if op in ("in", "intersects"):
        return value in expected
    if op == "pmatch":
        return any(value == p or value.startswith(p.rstrip("/") + "/") for p in expected)
    raise ValueError(f"operator {op} is not supported")


class Reference:
    """The reference evaluator behind the engine's interface (sensor.detect.engine.Engine):
    every rule against every record, in plain Python."""

    def __init__(self, conditions: dict[str, object]):
        self.conditions = conditions

    def match(self, records) -> list[tuple[int, str]]:
        return [(i, name) for i, record in enumerate(records)
                for name, condition in self.conditions.items() if evaluate(condition, record)]

"""Needles: the events that can match a rule of priority WARNING or above, in terms the
kernel can test before it sends an event, so that a flood cannot hide them (events.h,
`needles`): an open-family syscall and the path it names, exactly or by prefix.

A rule gives needles when its condition is a conjunction that fixes evt.type to
syscalls of the open family and fd.name to paths: `fd.name = P`, `fd.name in (...)`,
`fd.name startswith P`, `fd.name pmatch (...)`, `fd.directory = D` or `in (...)`, or an `or` of
these. Its other conjuncts only narrow it, so its needles cover every event it can
match, but for one case: the kernel sees the path as the process gave it, so an open
relative to a directory fd or the working directory is not a needle.
"""

from __future__ import annotations

from collections.abc import Callable

from sensor.detect.condition import And, Check, Or
from sensor.detect.alerts import in_containers
from sensor.detect.rule_loader import PRIORITIES, RuleSet
from sensor.kernel import layout
from sensor.kernel.control import Needle
from sensor.kernel.syscalls import EXEC, OPENS

COMM_LEN = layout.events().constants["MAYFLY_COMM_LEN"]  # a process name the kernel holds: 15 bytes and a NUL
NEEDLE_LEN = layout.events().constants["MAYFLY_NEEDLE_LEN"]  # a needle's path, as the trie's key holds it

THRESHOLD = "WARNING"  # this priority and the ones above it


def derive(ruleset: RuleSet) -> tuple[set[Needle], list[str], list[str]]:
    """The needles of the enabled rules at THRESHOLD or above, the rules they cover,
    and the rules left out because the kernel's trie (MAYFLY_MAX_NEEDLES) is full: a
    rule is covered with all its needles or not at all, in the order rules load."""
    urgent = set(PRIORITIES[:PRIORITIES.index(THRESHOLD) + 1])
    return _collect(ruleset, lambda item: str(item.body.get("priority", "")).upper() in urgent,
                    layout.events().constants["MAYFLY_MAX_NEEDLES"])


def stopping(ruleset: RuleSet, triggers: Callable[[str, str], bool],
             room: int) -> tuple[dict[Needle, str], set[str], list[str]]:
    """What the kernel stops a process at for its capture (its last act), from the
    container rules that trigger a capture (`triggers(rule, priority)`): needles within
    `room` entries, each with the access the rule asks of the open ("read", "write" or
    "any": an allowed process opening a library to read it is never stopped for a rule
    on writes below /lib), or an exec's file name; the process names whose exec stops;
    and the rules they cover."""
    chosen = [item for item in ruleset.rules if item.name in ruleset.conditions and triggers(
        item.name, str(item.body.get("priority", "")).upper()) and in_containers(ruleset.conditions[item.name])]
    found, covered, _ = _collect(ruleset, lambda item: item in chosen, room)
    access: dict[Needle, str] = {}
    for item in chosen:
        if item.name not in covered:
            continue
        wanted = _access(ruleset.conditions[item.name])
        for needle in _reduce(ruleset.conditions[item.name]):
            known = access.get(needle)
            access[needle] = wanted if known in (None, wanted) else "any"
    comms: set[str] = set()
    for item in chosen:
        execs = None if item.name in covered else _reduce_exec(ruleset.conditions[item.name])
        if execs is not None:
            names, exes = execs
            comms |= names
            access.update(dict.fromkeys(exes, "any"))
            covered.append(item.name)
    return access, comms, covered


def _reduce_exec(condition) -> tuple[set[str], set[Needle]] | None:
    """(process names, needles on the exec's file name) of a conjunction that fixes
    evt.type to execs and proc.name, or proc.exe, to values the kernel can test."""
    conjuncts = list(_conjuncts(condition))
    types = next((t for t in map(_types_of, conjuncts) if t is not None and t <= set(EXEC)), None)
    if not types:
        return None
    for node in conjuncts:
        if not isinstance(node, Check) or node.value is None:
            continue
        values = (node.value,) if isinstance(node.value, str) else node.value
        if node.field == "proc.name" and node.op in ("=", "in") and all(len(v.encode()) < COMM_LEN for v in values):
            return set(values), set()
        if node.field in ("proc.exe", "proc.exepath") and node.op in ("=", "in", "startswith") and \
                all(v.startswith("/") for v in values):
            exes = {Needle(t, v, node.op != "startswith") for t in types for v in values}
            return (set(), exes) if all(len(n.key()) <= NEEDLE_LEN for n in exes) else None
    return None


def _access(condition) -> str:
    """What a rule asks of an open: to read, to write, or either."""
    for node in _conjuncts(condition):
        if isinstance(node, Check) and node.op == "=" and node.value == "true":
            if node.field == "evt.is_open_read":
                return "read"
            if node.field == "evt.is_open_write":
                return "write"
    return "any"


def _collect(ruleset: RuleSet, chosen: Callable, limit: int) -> tuple[set[Needle], list[str], list[str]]:
    needles, covered, left_out = set(), [], []
    for item in ruleset.rules:
        condition = ruleset.conditions.get(item.name)
        if condition is None or not chosen(item):
            continue
        found = _reduce(condition)
        if found and all(len(n.key()) <= NEEDLE_LEN for n in found):
            if len(needles | found) > limit:
                left_out.append(item.name)
                continue
            needles |= found
            covered.append(item.name)
    return needles, covered, left_out


def _reduce(condition) -> set[Needle] | None:
    conjuncts = list(_conjuncts(condition))
    types = next((t for t in map(_types, conjuncts) if t is not None), None)
    paths = next((p for p in map(_paths, conjuncts) if p is not None), None)
    if not types or not paths:
        return None
    return {Needle(syscall, path, exact) for syscall in types for path, exact in paths}


def _conjuncts(node):
    if isinstance(node, And):
        for item in node.items:
            yield from _conjuncts(item)
    else:
        yield node


def _types(node) -> set[str] | None:
    """The open-family syscalls an evt.type conjunct allows (None: not one, or one that
    allows others too)."""
    types = _types_of(node)
    return types if types is not None and types <= set(OPENS) else None


def _types_of(node) -> set[str] | None:
    """The syscalls an evt.type conjunct allows (None: it is not one)."""
    if not isinstance(node, Check) or node.field != "evt.type" or node.op not in ("=", "in"):
        return None
    return {node.value} if node.op == "=" else set(node.value)


def _paths(node) -> set[tuple[str, bool]] | None:
    """(path, exact) of a conjunct that fixes fd.name; None if it does not."""
    if isinstance(node, Or):
        parts = [_paths(item) for item in node.items]
        return None if any(p is None for p in parts) else set().union(*parts)
    if not isinstance(node, Check):
        return None
    values = (node.value,) if isinstance(node.value, str) else node.value
    if values is None or not all(v.startswith("/") for v in values):
        return None
    if node.field == "fd.name" and node.op in ("=", "in"):
        return {(v, True) for v in values}
    if node.field == "fd.name" and node.op in ("startswith", "pmatch"):
        return {(v, False) for v in values}
    if node.field == "fd.directory" and node.op in ("=", "in"):
        return {(v.rstrip("/") + "/", False) for v in values}
    return None

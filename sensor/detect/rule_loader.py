"""Read rule files: YAML sequences of Falco-style `list`, `macro` and `rule` items.

Items are read in order across files, with Falco's `append` (a list's items, a macro's
or rule's condition text) and `override: {condition: append|replace}`. Conditions are
parsed (sensor.detect.condition), then each enabled rule's is expanded with the macros and
lists as they stand once every file is read. Every problem names its file, line and
reason, and rejects only the item it is in (a rule that uses a macro that did not load
is rejected too, saying so); the rest still loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from sensor.detect import condition, fields
from sensor.detect.correlate import Rate, Sequence, Step, duration_ns
from sensor.detect.evaluate import UNSUPPORTED_OPERATORS

PRIORITIES = ("EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL",
              "INFO", "DEBUG")
_ITEM_KEYS = {
    "rule": {"desc", "condition", "output", "priority"},
    "macro": {"condition"},
    "list": {"items"},
}
_TOP_LEVEL_KEYS = {"required_engine_version", "required_plugin_versions"}
# What a rule's alert may do (sensor/respond): its `actions` list, or a policy's response.
ACTIONS = ("kill_process", "kill_container", "freeze", "isolate", "capture")
_CORRELATIONS = ("sequence", "rate")  # Mayfly's rules beyond Falco's (docs/rules.md)


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    reason: str
    name: str | None = None
    kind: str | None = None  # what it rejects: "rule", "macro" or "list"; None for a whole file or item

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: {self.name}: {self.reason}" if self.name else f"{where}: {self.reason}"


@dataclass(frozen=True)
class Item:
    kind: str  # "rule", "macro" or "list"
    name: str
    body: dict[str, Any]
    path: str
    line: int
    condition_line: int = 0  # where its condition starts (0: it has none)


@dataclass
class RuleSet:
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)  # enabled rule name -> expanded condition AST
    sequences: dict[str, Sequence] = field(default_factory=dict)  # enabled sequence rules
    rates: dict[str, Rate] = field(default_factory=dict)  # enabled rate rules

    @property
    def loaded(self) -> int:
        return len(self.conditions) + len(self.sequences) + len(self.rates)

    @property
    def rules(self) -> list[Item]:
        return [i for i in self.items if i.kind == "rule"]

    @property
    def rejected(self) -> list[Problem]:
        """The problems that rejected a rule (one per rule)."""
        return list({p.name: p for p in self.problems if p.kind == "rule"}.values())

    @property
    def disabled(self) -> list[str]:
        return [r.name for r in self.rules if r.name not in self.conditions and r.name not in self.sequences
                and r.name not in self.rates]


def load(paths) -> RuleSet:
    ruleset = RuleSet()
    for path in paths:
        _load_file(str(path), ruleset)
    _compile(ruleset)
    return ruleset


def _compile(ruleset: RuleSet) -> None:
    """Apply appends and overrides in order, parse conditions, expand enabled rules.
    `ruleset.items` keeps the defining items (amendments are folded into them)."""
    lists: dict[str, tuple[str, ...]] = {}
    texts: dict[tuple[str, str], tuple[str, Item]] = {}  # (kind, name) -> (condition text, defining item)
    enabled: dict[str, bool] = {}
    definitions: dict[tuple[str, str], Item] = {}  # a redefinition replaces, an amendment folds in
    exceptions: dict[str, dict[str, dict]] = {}  # rule -> exception name -> its spec (values grow with appends)
    for item in ruleset.items:
        key = (item.kind, item.name)
        mode = "append" if item.body.get("append") else (item.body.get("override") or {}).get("condition")
        if item.kind == "rule" and isinstance(item.body.get("exceptions"), list):
            _add_exceptions(exceptions.setdefault(item.name, {}), item.body["exceptions"],
                            merge=bool(item.body.get("append")) or (item.body.get("override") or {}).get(
                                "exceptions") == "append")
        if item.kind == "list":
            items = condition.expand_items([str(x) for x in item.body.get("items") or []], lists)
            lists[item.name] = lists.get(item.name, ()) + items if mode == "append" else items
        elif mode in ("append", "replace") and key not in texts:
            ruleset.problems.append(Problem(item.path, item.line, f"amends an undefined {item.kind}", item.name,
                                            item.kind))
            continue
        elif "condition" in item.body:
            text = str(item.body["condition"])
            texts[key] = (f"{texts[key][0]} {text}" if mode == "append" else text,
                          texts[key][1] if mode else item)
        if item.kind == "rule" and "enabled" in item.body:
            enabled[item.name] = bool(item.body["enabled"])
        if not mode:
            definitions[key] = item
    ruleset.items = list(definitions.values())

    macros, broken = {}, {}
    for (kind, name), (text, item) in texts.items():
        try:
            parsed = condition.parse(text)
        except condition.ConditionError as e:
            problem = _condition_problem(item, text, e)
            broken[name] = problem
            ruleset.problems.append(problem)
            continue
        if kind == "macro":
            macros[name] = parsed
        elif enabled.get(name, True):
            ruleset.conditions[name] = parsed
    for name, parsed in list(ruleset.conditions.items()):
        item = texts["rule", name][1]
        try:
            unless = _exceptions_ast(exceptions.get(name, {}))
            if unless is not None:
                parsed = condition.And((parsed, condition.Not(unless)))
            ruleset.conditions[name] = expanded = condition.expand(parsed, macros, lists)
        except condition.ConditionError as e:
            del ruleset.conditions[name]
            missing = e.reason.removeprefix("undefined macro ")
            reason = f"uses macro {missing}, which did not load ({broken[missing].reason})" if missing in broken \
                else e.reason
            ruleset.problems.append(Problem(item.path, item.condition_line or item.line, reason, name, "rule"))
            continue
        reason = unsupported(expanded)
        if reason:
            del ruleset.conditions[name]
            ruleset.problems.append(Problem(item.path, item.condition_line or item.line, reason, name, "rule"))
    for item in ruleset.items:
        if item.kind == "rule" and enabled.get(item.name, True) and item.body.keys() & set(_CORRELATIONS):
            _correlation(item, macros, lists, broken, ruleset)
    loaded = set(ruleset.conditions) | set(ruleset.sequences) | set(ruleset.rates)
    rejected = {("rule", i.name) for i in ruleset.items if i.kind == "rule"} - {("rule", n) for n in loaded} - \
        {("rule", n) for n, on in enabled.items() if not on}
    ruleset.items = [i for i in ruleset.items if (i.kind, i.name) not in rejected]


def _correlation(item: Item, macros: dict, lists: dict, broken: dict, ruleset: RuleSet) -> None:
    """A sequence or rate rule's spec into the rule set, or its problem."""
    kind = "sequence" if "sequence" in item.body else "rate"
    spec = item.body[kind]

    def problem(reason: str) -> None:
        ruleset.problems.append(Problem(item.path, item.line, reason, item.name, "rule"))

    def parse(text) -> Any:
        parsed = condition.expand(condition.parse(str(text)), macros, lists)
        reason = unsupported(parsed)
        if reason:
            raise condition.ConditionError(reason, 0)
        return parsed

    def known(name) -> str | None:
        if name is None or name in ("container", "process") or fields.lookup(str(name)) is not None:
            return None if name is None else str(name)
        raise condition.ConditionError(f"uses field Mayfly does not provide: {name}", 0)

    try:
        if not isinstance(spec, dict):
            raise ValueError(f"{kind} must be a mapping")
        by = known(spec.get("by", "container"))
        if kind == "sequence":
            steps = spec.get("steps")
            if not isinstance(steps, list) or len(steps) < 2 or not all(isinstance(s, dict) for s in steps):
                raise ValueError("a sequence has two or more steps, each a mapping with a condition")
            parsed = tuple(Step(parse(s.get("condition")), known(s.get("same"))) for s in steps)
            if len({s.same is None for s in parsed}) > 1:
                raise ValueError("`same` is given for every step or for none")
            ruleset.sequences[item.name] = Sequence(parsed, duration_ns(spec.get("within", "")), by)
        else:
            threshold = spec.get("threshold")
            if not isinstance(threshold, int) or threshold < 1:
                raise ValueError("a rate needs a threshold: a positive integer")
            ruleset.rates[item.name] = Rate(parse(spec.get("condition")), duration_ns(spec.get("window", "")),
                                            threshold, by, known(spec.get("distinct")))
    except condition.ConditionError as e:
        missing = e.reason.removeprefix("undefined macro ")
        problem(f"uses macro {missing}, which did not load ({broken[missing].reason})" if missing in broken
                else f"{kind}: {e.reason}")
    except ValueError as e:
        problem(f"{kind}: {e}")


def _add_exceptions(known: dict[str, dict], items: list, merge: bool) -> None:
    """Falco's exceptions, by name: an append adds values to a named one (or adds it)."""
    for spec in items:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue
        values = [v for v in spec.get("values") or [] if v is not None]
        if merge and spec["name"] in known:
            known[spec["name"]]["values"] = known[spec["name"]]["values"] + values
        else:
            known[spec["name"]] = {"fields": spec.get("fields"), "comps": spec.get("comps"), "values": values}


def _exceptions_ast(specs: dict[str, dict]):
    """What a rule's exceptions exclude, as one condition (None: nothing). Each exception
    names fields and comparisons (= by default; `in` for a single field named alone);
    each of its values is a tuple of one value per field, and matching all of a tuple
    excepts the event."""
    alternatives = []
    for spec in specs.values():
        names, comps, values = spec["fields"], spec["comps"], spec["values"]
        if isinstance(names, str):  # one field: its values are one list
            items = tuple(str(v) for v in values for v in (v if isinstance(v, list) else [v]))
            if items:
                alternatives.append(condition.Check(names, str(comps or "in"), items))
            continue
        names = [str(n) for n in names or []]
        comps = [str(c) for c in comps] if isinstance(comps, list) else ["="] * len(names)
        for row in values:
            row = row if isinstance(row, list) else [row]
            if len(row) != len(names):
                raise condition.ConditionError(f"exception {spec} has a value of {len(row)} items for "
                                               f"{len(names)} fields", 0)
            checks = []
            for field_name, comp, value in zip(names, comps, row):
                if comp in condition.LIST_OPERATORS:
                    value = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
                    checks.append(condition.Check(field_name, comp, value))
                else:
                    checks.append(condition.Check(field_name, "=" if comp == "==" else comp, str(value)))
            alternatives.append(checks[0] if len(checks) == 1 else condition.And(tuple(checks)))
    if not alternatives:
        return None
    return alternatives[0] if len(alternatives) == 1 else condition.Or(tuple(alternatives))


def unsupported(expanded, host: bool = False) -> str | None:
    """Why Mayfly cannot evaluate a condition: fields it does not provide, operators
    it does not implement; None when it can. `host`: the host.* fields are allowed
    (policy files; events do not carry them)."""
    missing = sorted(f for f in condition.fields(expanded) if fields.lookup(f) is None)
    operators = sorted({c.op for c in condition.checks(expanded)} & UNSUPPORTED_OPERATORS)
    reasons = []
    hosts = sorted(f for f in condition.fields(expanded) if not host and f not in missing
                   and fields.lookup(f)[0].part == "host")
    if hosts:
        reasons.append(f"uses {', '.join(hosts)}: host.* fields are for policy files (docs/policy.md)")
    if missing:
        reasons.append(f"uses field{'s' if len(missing) > 1 else ''} Mayfly does not provide: {', '.join(missing)}")
    if operators:
        reasons.append(f"uses operator{'s' if len(operators) > 1 else ''} Mayfly does not implement: "
                       f"{', '.join(operators)}")
    return "; ".join(reasons) or None


def _condition_problem(item: Item, text: str, error: condition.ConditionError) -> Problem:
    near = text[error.offset:error.offset + 30].split("\n")[0]
    line = (item.condition_line or item.line) + text.count("\n", 0, error.offset)
    return Problem(item.path, line, f"condition: {error.reason} at {near!r}" if near else
                   f"condition: {error.reason} at its end", item.name, item.kind)


def read_items(path: str, what: str = "a rule file") -> tuple[list[tuple[Any, int, int]], list[Problem]]:
    """A YAML file's top-level sequence: each item's body, line, and the line its
    `condition` starts on (0: none); and the problems that kept any out."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        return [], [Problem(path, 0, f"cannot read: {e.strerror}")]
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        return [], [Problem(path, mark.line + 1 if mark else 0, f"invalid YAML: {e.problem}")]
    finally:
        loader.dispose()
    if root is None:
        return [], []
    if not isinstance(root, yaml.SequenceNode):
        return [], [Problem(path, root.start_mark.line + 1, f"{what} is a YAML sequence of items")]
    items, problems = [], []
    for node in root.value:
        line = node.start_mark.line + 1
        try:
            body = loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            problems.append(Problem(path, line, f"invalid YAML: {e}"))
            continue
        condition_line = next((v.start_mark.line + 1 + (v.style in ("|", ">")) for k, v in node.value
                               if getattr(k, "value", None) == "condition"), 0) \
            if isinstance(node, yaml.MappingNode) else 0
        items.append((body, line, condition_line))
    return items, problems


def _load_file(path: str, ruleset: RuleSet) -> None:
    items, problems = read_items(path)
    ruleset.problems += problems
    for body, line, condition_line in items:
        item, problem = _item(body, os.fspath(path), line, condition_line)
        if problem:
            ruleset.problems.append(problem)
        elif item:
            ruleset.items.append(item)


def _item(body: Any, path: str, line: int, condition_line: int) -> tuple[Item | None, Problem | None]:
    if not isinstance(body, dict):
        return None, Problem(path, line, "an item must be a mapping")
    if body.keys() & _TOP_LEVEL_KEYS:
        return None, None
    kinds = [k for k in _ITEM_KEYS if k in body]
    if len(kinds) != 1:
        return None, Problem(path, line, "an item needs exactly one of rule, macro or list")
    kind = kinds[0]
    name = body[kind]
    if not isinstance(name, str) or not name:
        return None, Problem(path, line, f"the {kind} name must be a non-empty string")
    amends = body.get("append") or "override" in body
    correlation = [k for k in _CORRELATIONS if k in body] if kind == "rule" else []
    if len(correlation) + ("condition" in body) > 1:
        return None, Problem(path, line, "a rule has one of condition, sequence or rate", name, kind)
    if correlation and amends:
        return None, Problem(path, line, f"a {correlation[0]} rule cannot be appended to or overridden", name, kind)
    missing = sorted(_ITEM_KEYS[kind] - body.keys() - ({"condition"} if correlation else set()))
    if missing and not amends and body.get("enabled") is None:
        return None, Problem(path, line, f"{kind} lacks {', '.join(missing)}", name, kind)
    priority = body.get("priority")
    if priority is not None and str(priority).upper() not in PRIORITIES:
        return None, Problem(path, line, f"unknown priority {priority!r}", name, kind)
    if kind == "rule" and "actions" in body:
        actions = body["actions"]
        if not isinstance(actions, list) or not all(a in ACTIONS for a in actions):
            return None, Problem(path, line, f"actions must be a list of {', '.join(ACTIONS)}, not {actions!r}",
                                 name, kind)
    if kind == "rule" and not isinstance(body.get("capture", False), bool):
        return None, Problem(path, line, f"capture must be true or false, not {body['capture']!r}", name, kind)
    if kind == "rule" and body.get("source", "syscall") != "syscall":
        return None, Problem(path, line, f"source {body['source']!r} is not supported: Mayfly's rules see "
                                         "syscall events only (no plugin sources)", name, kind)
    return Item(kind, name, body, path, line, condition_line), None


def markdown_report(ruleset: RuleSet, command: list[str]) -> str:
    """The rejected rules and why, per file, as Markdown (docs/falco-compat.md)."""
    lines = ["# Falco rule compatibility", "",
             f"Generated by `{' '.join(command)}`.", "",
             f"{len(ruleset.conditions)} rules loaded, {len(ruleset.rejected)} rejected"
             + (f", {len(ruleset.disabled)} loaded but disabled" if ruleset.disabled else "") + ".", ""]
    by_file: dict[str, list[Problem]] = {}
    for problem in ruleset.rejected:
        by_file.setdefault(problem.path, []).append(problem)
    for path, problems in by_file.items():
        lines += [f"## {os.path.basename(path)}", "", "| rule | line | why it is rejected |", "| --- | --- | --- |"]
        lines += [f"| {p.name} | {p.line} | {p.reason} |" for p in problems]
        lines.append("")
    return "\n".join(lines)

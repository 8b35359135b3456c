"""Read rule files: YAML sequences of Falco-style `list`, `macro` and `rule` items.

Every problem names its file, line and reason, and rejects only the item it is in;
the rest of the file still loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

PRIORITIES = ("EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL",
              "INFO", "DEBUG")
_ITEM_KEYS = {
    "rule": {"desc", "condition", "output", "priority"},
    "macro": {"condition"},
    "list": {"items"},
}
_TOP_LEVEL_KEYS = {"required_engine_version", "required_plugin_versions"}


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    reason: str
    name: str | None = None

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


@dataclass
class RuleSet:
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def rules(self) -> list[Item]:
        return [i for i in self.items if i.kind == "rule"]


def load(paths) -> RuleSet:
    ruleset = RuleSet()
    for path in paths:
        _load_file(str(path), ruleset)
    return ruleset


def _load_file(path: str, ruleset: RuleSet) -> None:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        ruleset.problems.append(Problem(path, 0, f"cannot read: {e.strerror}"))
        return
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        ruleset.problems.append(Problem(path, mark.line + 1 if mark else 0, f"invalid YAML: {e.problem}"))
        return
    finally:
        loader.dispose()
    if root is None:
        return
    if not isinstance(root, yaml.SequenceNode):
        ruleset.problems.append(Problem(path, root.start_mark.line + 1, "a rule file is a YAML sequence of items"))
        return
    for node in root.value:
        line = node.start_mark.line + 1
        try:
            body = loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            ruleset.problems.append(Problem(path, line, f"invalid YAML: {e}"))
            continue
        item, problem = _item(body, os.fspath(path), line)
        if problem:
            ruleset.problems.append(problem)
        elif item:
            ruleset.items.append(item)


def _item(body: Any, path: str, line: int) -> tuple[Item | None, Problem | None]:
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
    missing = sorted(_ITEM_KEYS[kind] - body.keys())
    if missing and not amends and body.get("enabled") is None:
        return None, Problem(path, line, f"{kind} lacks {', '.join(missing)}", name)
    priority = body.get("priority")
    if priority is not None and str(priority).upper() not in PRIORITIES:
        return None, Problem(path, line, f"unknown priority {priority!r}", name)
    return Item(kind, name, body, path, line), None

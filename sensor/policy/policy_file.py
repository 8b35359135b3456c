"""Policy files (docs/policy.md): a YAML sequence of items, in the rule files' style.

    - policy: NAME            a placement rule: a condition on the container and this
      condition: ...          host (the rule language, with container.* and host.*
      verdict: allow|alert|deny  fields), its verdict, whether the gate holds for it,
      gate: true              and the forensics settings its containers get
      forensics: {capture: none|events|full, priority: WARNING, ttl: 90d, weight: 2}
    - response: NAME          what alerts do: by rule, tag or priority, with a mode
      rule: RULE | tag: TAG | priority: PRIORITY
      actions: [kill_container]
      mode: enforce|monitor|dry-run
    - protect: NAME           containers no action ever targets
      condition: ...
    - host: {labels: {...}, labels_file: PATH}
    - settings: {...}         see Settings

Every problem names the file, line and reason and rejects only its item.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields as dataclass_fields
from typing import Any

import yaml

from sensor.detect import condition
from sensor.detect.correlate import duration_ns
from sensor.detect.rule_loader import ACTIONS, PRIORITIES, Problem, read_items, unsupported

VERDICTS = ("allow", "alert", "deny")    # in rising severity
ORDERS = ("first-match", "strictest")
GATES = ("rules", "all", "off")
FAILURES = ("open", "closed")
MODES = ("enforce", "monitor", "dry-run")
CAPTURE_LEVELS = ("none", "events", "full")
KINDS = ("policy", "response", "protect", "host", "settings")


@dataclass(frozen=True)
class Forensics:
    """A container's forensics settings, set at spawn: what a capture takes (none, the
    event timeline only, or full with memory and files), the alert priority that
    triggers one, and its cases' retention class (a TTL, and a weight in the value
    score). None: the sensor's own setting."""
    capture: str | None = None
    priority: str | None = None
    ttl_s: float | None = None
    weight: float | None = None

    def as_record(self) -> dict:
        return {k: v for k, v in (("capture", self.capture), ("priority", self.priority), ("ttl_s", self.ttl_s),
                                  ("weight", self.weight)) if v is not None}


@dataclass(frozen=True)
class PolicyRule:
    name: str
    condition: Any          # expanded condition AST
    text: str               # the condition as written, for records
    verdict: str
    gate: bool
    forensics: Forensics | None
    path: str
    line: int


@dataclass(frozen=True)
class Response:
    name: str
    rule: str | None
    tag: str | None
    priority: str | None    # this priority or above
    actions: tuple[str, ...]
    mode: str | None        # None: the policy's

    def matches(self, rule: str, tags, priority: str) -> bool:
        return ((self.rule is None or self.rule == rule) and (self.tag is None or self.tag in (tags or ()))
                and (self.priority is None or (priority in PRIORITIES
                                               and PRIORITIES.index(priority) <= PRIORITIES.index(self.priority))))


@dataclass(frozen=True)
class Settings:
    """How a policy is applied, each with its default."""
    default: str = "allow"             # the verdict when no policy rule matches
    order: str = "first-match"         # first-match: the first matching rule, in file order; strictest: the most
                                       # severe verdict of all that match (deny > alert > allow)
    gate: str = "rules"                # rules: hold new containers while a `gate: true` rule exists; all; off
    gate_deadline_s: float = 2.0       # longest a container is held for its verdict
    failure: str = "open"              # past the deadline, or when the sensor stops: release (open) or kill (closed)
    mode: str = "enforce"              # responses' mode, unless a response or rule says otherwise
    kill_budget: int = 3               # destructive actions per workload...
    budget_window_s: float = 60.0      # ...in this window; past it, the ladder: isolate+freeze, then alert only
    workload: str = "image"            # what a workload is: image, or label[KEY]
    min_instances: int = 1             # never take a workload below this many running containers on this host
    disarm_workloads: int = 5          # a destructive rule hitting more distinct workloads than this...
    disarm_window_s: float = 60.0      # ...in this window goes to monitor
    isolate_allow: tuple = ()          # (network, port or 0) an isolated container still reaches
    kernel_kill: bool = False          # kill_process rules the kernel can decide alone kill at the act, in the
                                       # kernel, unweighed (their action records say "done in the kernel")


@dataclass
class Policy:
    path: str | None = None
    rules: list[PolicyRule] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    protect: list[PolicyRule] = field(default_factory=list)
    host_labels: dict[str, str] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    problems: list[Problem] = field(default_factory=list)

    @property
    def gating(self) -> bool:
        """Whether the kernel holds new containers' first exec for a verdict."""
        return self.settings.gate == "all" or (self.settings.gate == "rules" and any(r.gate for r in self.rules))


class _Bad(ValueError):
    pass


def load(path: str | os.PathLike) -> Policy:
    """A policy file; problems reject their items, and are in `problems`."""
    path = os.fspath(path)
    policy = Policy(path=path)
    items, policy.problems = read_items(path, "a policy file")
    settings: dict[str, Any] = {}
    for body, line, condition_line in items:
        kinds = [k for k in KINDS if isinstance(body, dict) and k in body]
        name = body.get(kinds[0]) if len(kinds) == 1 and kinds[0] not in ("host", "settings") else None
        try:
            if len(kinds) != 1:
                raise _Bad(f"an item needs exactly one of {', '.join(KINDS)}")
            kind = kinds[0]
            if kind in ("policy", "response", "protect") and (not isinstance(name, str) or not name):
                raise _Bad(f"the {kind} name must be a non-empty string")
            if kind == "policy":
                policy.rules.append(_policy_rule(body, path, line, condition_line))
            elif kind == "protect":
                policy.protect.append(PolicyRule(name, _condition(body), str(body["condition"]), "allow", False, None,
                                                 path, line))
            elif kind == "response":
                policy.responses.append(_response(body))
            elif kind == "host":
                policy.host_labels.update(_host(body["host"], path))
            else:
                settings.update(_settings(body["settings"]))
        except _Bad as e:
            policy.problems.append(Problem(path, condition_line if "condition:" in str(e) else line, str(e), name))
    policy.settings = Settings(**settings)
    return policy


def _condition(body: dict):
    text = body.get("condition")
    if not isinstance(text, str) or not text.strip():
        raise _Bad("needs a condition")
    try:
        parsed = condition.expand(condition.parse(text), {}, {})
    except condition.ConditionError as e:
        raise _Bad(f"condition: {e.reason}") from None
    reason = unsupported(parsed, host=True)
    if reason:
        raise _Bad(f"condition: {reason}")
    return parsed


def _one_of(body: dict, key: str, allowed: tuple, default=None):
    value = body.get(key, default)
    if value is not None and value not in allowed:
        raise _Bad(f"{key} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _policy_rule(body: dict, path: str, line: int, condition_line: int) -> PolicyRule:
    unknown = set(body) - {"policy", "condition", "verdict", "gate", "forensics", "desc", "enabled"}
    if unknown:
        raise _Bad(f"unknown keys: {', '.join(sorted(unknown))}")
    verdict = _one_of(body, "verdict", VERDICTS)
    if verdict is None:
        raise _Bad(f"needs a verdict: one of {', '.join(VERDICTS)}")
    if not isinstance(body.get("gate", False), bool):
        raise _Bad(f"gate must be true or false, not {body['gate']!r}")
    return PolicyRule(body["policy"], _condition(body), str(body["condition"]), verdict, body.get("gate", False),
                      _forensics(body.get("forensics")), path, condition_line or line)


def _forensics(spec) -> Forensics | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) - {"capture", "priority", "ttl", "weight"}:
        raise _Bad("forensics is a mapping of capture, priority, ttl and weight")
    priority = spec.get("priority")
    if priority is not None and str(priority).upper() not in PRIORITIES:
        raise _Bad(f"forensics: unknown priority {priority!r}")
    weight = spec.get("weight")
    if weight is not None and (not isinstance(weight, (int, float)) or weight <= 0):
        raise _Bad(f"forensics: weight must be a positive number, not {weight!r}")
    return Forensics(_one_of(spec, "capture", CAPTURE_LEVELS), str(priority).upper() if priority else None,
                     _duration(spec["ttl"], "forensics: ttl") if "ttl" in spec else None,
                     float(weight) if weight is not None else None)


def _duration(value, what: str) -> float:
    try:
        return duration_ns(str(value)) / 1e9
    except ValueError as e:
        raise _Bad(f"{what}: {e}") from None


def _response(body: dict) -> Response:
    unknown = set(body) - {"response", "rule", "tag", "priority", "actions", "mode", "desc"}
    if unknown:
        raise _Bad(f"unknown keys: {', '.join(sorted(unknown))}")
    actions = body.get("actions")
    if not isinstance(actions, list) or not actions or not all(a in ACTIONS for a in actions):
        raise _Bad(f"actions must be a list of {', '.join(ACTIONS)}, not {actions!r}")
    priority = body.get("priority")
    if priority is not None and str(priority).upper() not in PRIORITIES:
        raise _Bad(f"unknown priority {priority!r}")
    if not {"rule", "tag", "priority"} & set(body):
        raise _Bad("a response names a rule, a tag or a priority")
    return Response(body["response"], body.get("rule"), body.get("tag"), str(priority).upper() if priority else None,
                    tuple(actions), _one_of(body, "mode", MODES))


def _host(spec, path: str) -> dict[str, str]:
    if not isinstance(spec, dict) or set(spec) - {"labels", "labels_file"}:
        raise _Bad("host is a mapping of labels and labels_file")
    labels = dict(spec.get("labels") or {})
    if "labels_file" in spec:
        name = os.path.join(os.path.dirname(path), str(spec["labels_file"]))
        try:
            with open(name) as f:
                found = yaml.safe_load(f)
        except OSError as e:
            raise _Bad(f"labels_file {name}: cannot read: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise _Bad(f"labels_file {name}: invalid YAML: {e}") from None
        if not isinstance(found, dict):
            raise _Bad(f"labels_file {name}: must be a mapping of labels")
        labels.update(found)
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in labels.items()}


def _settings(spec) -> dict[str, Any]:
    # As written: durations without the _s (gate_deadline: 500ms).
    names = {f.name.removesuffix("_s"): f.name for f in dataclass_fields(Settings)}
    if not isinstance(spec, dict):
        raise _Bad("settings is a mapping")
    result: dict[str, Any] = {}
    for key, value in spec.items():
        name = names.get(key)
        if name is None:
            raise _Bad(f"unknown setting {key!r}; known: {', '.join(names)}")
        if name.endswith("_s"):
            result[name] = _duration(value, key)
        elif name in ("kill_budget", "min_instances", "disarm_workloads"):
            if not isinstance(value, int) or value < 0:
                raise _Bad(f"{key} must be a whole number, not {value!r}")
            result[name] = value
        elif name == "kernel_kill":
            if not isinstance(value, bool):
                raise _Bad(f"kernel_kill must be true or false, not {value!r}")
            result[name] = value
        elif name == "isolate_allow":
            result[name] = tuple(_destination(d) for d in (value if isinstance(value, list) else [value]))
        elif name == "workload":
            if not (value == "image" or (isinstance(value, str) and value.startswith("label[") and value.endswith("]"))):
                raise _Bad(f"workload must be image or label[KEY], not {value!r}")
            result[name] = value
        else:
            if name == "gate" and isinstance(value, bool):  # YAML reads a bare off as false
                spec = {**spec, key: "all" if value else "off"}
            allowed = {"default": VERDICTS, "order": ORDERS, "gate": GATES, "failure": FAILURES, "mode": MODES}[name]
            result[name] = _one_of(spec, key, allowed)
    return result


def _destination(text) -> tuple[str, int]:
    """ADDRESS[/PREFIX][:PORT], or [IPv6][/PREFIX][:PORT]."""
    text = str(text)
    host, port = text, 0
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        prefix, _, port_text = rest.partition(":")
        host += prefix
        port = int(port_text) if port_text.isdigit() else 0
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text.isdigit():
            raise _Bad(f"isolate_allow: bad port in {text!r}")
        port = int(port_text)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise _Bad(f"isolate_allow: {text!r} is not ADDRESS[/PREFIX][:PORT]") from None
    if not 0 <= port < 65536:
        raise _Bad(f"isolate_allow: port out of range in {text!r}")
    return str(network), port

"""Sequence and rate rules: loading their syntax, and the state they keep per container."""

import pytest

from sensor.detect import correlate, rule_loader
from sensor.detect.alerts import Alerts
from sensor.detect.correlate import duration_ns

SECOND = 1_000_000_000


def event(ts, evt, container="c1", pid=10, **proc):
    return {"kind": "event", "ts": ts, "container": {"id": container, "cgroup_id": 1},
            "proc": {"pid": pid, "comm": "sh", **proc}, "evt": evt}


def written(ts, path, **kw):
    return event(ts, {"type": "openat", "res": 3, "dirfd": -100, "name": path, "flags": 0o1101, "mode": 0o644}, **kw)


def chmodded(ts, path, **kw):
    return event(ts, {"type": "fchmodat", "res": 0, "dirfd": -100, "name": path, "mode": 0o755}, **kw)


def executed(ts, path, **kw):
    return event(ts, {"type": "execve", "res": 0, "filename": path, "argv": [path]}, exe=path, **kw)


def connected(ts, address, **kw):
    return event(ts, {"type": "connect", "res": 0, "fd": {"num": 3, "type": "ipv4", "role": "client", "l4proto": "tcp",
                                                        "remote": {"addr": address, "port": 80}}}, **kw)


def exited(container):
    return {"kind": "container", "ts": 0, "state": "exit", "container": {"id": container}}


@pytest.fixture
def alerts(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("""
- rule: Drop and run
  desc: d
  sequence:
    within: 30s
    steps:
      - condition: evt.type = openat and evt.is_open_write = true
        same: fd.name
      - condition: evt.type = fchmodat
        same: evt.arg.name
      - condition: evt.type = execve
        same: proc.exepath
  output: ran %proc.exepath
  priority: WARNING
- rule: Scan
  desc: d
  rate:
    condition: evt.type = connect
    window: 10s
    threshold: 3
    distinct: fd.sip
  output: scan
  priority: NOTICE
""")
    ruleset = rule_loader.load([path])
    assert ruleset.problems == [] and ruleset.loaded == 2
    return Alerts(ruleset)


def names(found):
    return [a["rule"] for a in found]


def test_a_sequence_fires_when_its_steps_come_in_order_for_the_same_value(alerts):
    found = alerts([written(1, "/tmp/x"), chmodded(2, "/tmp/y"), chmodded(3, "/tmp/x"), executed(4, "/tmp/x")])
    assert names(found) == ["Drop and run"]
    assert found[0]["output"] == "ran /tmp/x"
    assert [e["evt"]["type"] for e in found[0]["events"]] == ["openat", "fchmodat", "execve"]


def test_a_sequence_needs_every_step_in_order_within_its_window_and_container(alerts):
    assert alerts([chmodded(1, "/tmp/x"), written(2, "/tmp/x"), executed(3, "/tmp/x")]) == []  # out of order
    assert alerts([written(10, "/tmp/a"), chmodded(11, "/tmp/a"), executed(12 + 30 * SECOND, "/tmp/a")]) == []
    assert alerts([written(100, "/tmp/b"), chmodded(101, "/tmp/b", container="c2"), executed(102, "/tmp/b")]) == []
    # state carries over batches, and a container's exit drops it
    assert alerts([written(200, "/tmp/c"), chmodded(201, "/tmp/c")]) == []
    assert names(alerts([executed(202, "/tmp/c")])) == ["Drop and run"]
    assert alerts([written(300, "/tmp/d"), chmodded(301, "/tmp/d"), exited("c1")]) == []
    assert alerts([executed(302, "/tmp/d")]) == []


def test_a_rate_counts_distinct_values_per_container_within_its_window(alerts):
    assert alerts([connected(1, "10.0.0.1"), connected(2, "10.0.0.1"), connected(3, "10.0.0.2")]) == []
    assert alerts([connected(4, "10.0.0.3", container="c2")]) == []  # another container's count
    found = alerts([connected(5, "10.0.0.3")])
    assert names(found) == ["Scan"] and len(found[0]["events"]) == 4
    assert alerts([connected(6, "10.0.0.4"), connected(7, "10.0.0.5")]) == []  # counting starts again
    assert alerts([connected(8 + 10 * SECOND, "10.0.0.6")]) == []  # the earlier ones left the window


def test_state_is_bounded(alerts, monkeypatch):
    monkeypatch.setattr(correlate, "MAX_KEYS", 5)
    alerts([written(i, f"/tmp/{i}", container=f"c{i}") for i in range(50)])
    assert all(len(states) <= 5 for states in alerts.correlator._partials.values())


@pytest.mark.parametrize("body, reason", [
    ("sequence: {within: 30s, steps: [{condition: evt.type = openat}]}", "two or more steps"),
    ("sequence: {within: soon, steps: [{condition: evt.type = a}, {condition: evt.type = b}]}", "not a duration"),
    ("sequence: {within: 1s, steps: [{condition: evt.type = a, same: fd.name}, {condition: evt.type = b}]}",
     "for every step or for none"),
    ("sequence: {within: 1s, steps: [{condition: proc.nope = 1}, {condition: evt.type = b}]}",
     "Mayfly does not provide: proc.nope"),
    ("rate: {condition: evt.type = connect, window: 10s}", "threshold"),
    ("rate: {condition: evt.type = connect, window: 10s, threshold: 2, by: fd.bogus}", "fd.bogus"),
    ("condition: evt.type = a\n  rate: {condition: evt.type = connect, window: 1s, threshold: 1}",
     "one of condition, sequence or rate"),
])
def test_a_broken_correlation_rule_is_rejected_alone_saying_why(tmp_path, body, reason):
    path = tmp_path / "rules.yaml"
    path.write_text(f"- rule: Broken\n  desc: d\n  output: o\n  priority: INFO\n  {body}\n"
                    "- rule: Fine\n  desc: d\n  condition: evt.type = openat\n  output: o\n  priority: INFO\n")
    ruleset = rule_loader.load([path])
    (problem,) = ruleset.problems
    assert problem.name == "Broken" and problem.line == 1 and reason in problem.reason, problem
    assert list(ruleset.conditions) == ["Fine"]


def test_durations():
    assert duration_ns("30s") == 30 * SECOND and duration_ns("500ms") == SECOND // 2
    assert duration_ns("2m") == 120 * SECOND and duration_ns(5) == 5 * SECOND
    with pytest.raises(ValueError):
        duration_ns("")

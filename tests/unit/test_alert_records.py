"""Alert records: rendered outputs, and what the loaded rules ask the kernel for."""

from sensor.detect import rule_loader
from sensor.detect.alerts import Alerts, render


def load(tmp_path, text):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    ruleset = rule_loader.load([path])
    assert ruleset.problems == []
    return Alerts(ruleset)


RULE = "- rule: {name}\n  desc: d\n  condition: {condition}\n  output: {output}\n  priority: {priority}\n  tags: [t1]\n"


def test_an_alert_carries_the_rule_the_rendered_output_and_the_event(tmp_path):
    alerts = load(tmp_path, RULE.format(name="Shadow", condition="evt.type = openat and fd.name = /etc/shadow",
                                        output="read %fd.name by %proc.name (%user.loginuid)", priority="warning"))
    event = {"kind": "event", "ts": 7, "container": {"id": "c"}, "proc": {"pid": 1, "comm": "cat"},
             "evt": {"type": "openat", "res": 3, "name": "/etc/shadow", "flags": 0}}
    (alert,) = alerts([event, {**event, "evt": {**event["evt"], "name": "/etc/passwd"}}])
    assert (alert["kind"], alert["rule"], alert["priority"], alert["tags"]) == ("alert", "Shadow", "WARNING", ["t1"])
    assert alert["output"] == "read /etc/shadow by cat (<NA>)"  # a field Mayfly lacks renders as Falco's <NA>
    assert alert["ts"] == 7 and alert["evt"] == event["evt"] and alert["container"] == {"id": "c"}
    assert alert["source_file"] == str(tmp_path / "rules.yaml")


def test_the_rules_say_which_event_types_and_whether_the_fd_table_is_needed(tmp_path):
    typed = load(tmp_path, RULE.format(name="A", condition="evt.type in (openat, connect) and proc.name = x",
                                       output="o", priority="INFO"))
    assert typed.types == {"openat", "connect"} and not typed.reads_fds
    fds = load(tmp_path, RULE.format(name="B", condition="evt.type = dup2 and fd.type = ipv4", output="o",
                                     priority="INFO"))
    assert fds.reads_fds
    untyped = load(tmp_path, RULE.format(name="C", condition="proc.name = x", output="o", priority="INFO"))
    assert untyped.types is None


def test_render_joins_several_values():
    record = {"proc": {"anames": ["sh", "runc"]}}
    assert render("%proc.aname and %proc.aname[2] and %proc.aname[9]", record) == "sh,runc and runc and <NA>"


def test_rules_that_all_require_a_container_let_the_host_be_ignored(tmp_path):
    inside = RULE.format(name="In", condition="container.id != host and proc.name = x", output="o", priority="INFO")
    also = RULE.format(name="Also", condition="evt.type = openat and (not container.id = host) and fd.name = y",
                       output="o", priority="INFO")
    anywhere = RULE.format(name="Any", condition="container.id != host or proc.name = x", output="o",
                           priority="INFO")
    assert load(tmp_path, inside + also).containers_only
    assert not load(tmp_path, inside + anywhere).containers_only

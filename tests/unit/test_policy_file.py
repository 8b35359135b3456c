"""Policy files: what loads, every problem with its file, line and reason, only the
broken item rejected; verdicts in either order with the default; host.* fields are for
policy files, not rules; a rule's actions are checked."""

import textwrap

from sensor.detect import rule_loader
from sensor.policy import policy_file
from sensor.policy.decide import decide

HOST = {"name": "node-1", "kernel": "6.18.0", "labels": {"pci": "true"}, "image_cases": 0, "running": 1}
UNPINNED = {"id": "c1", "image": {"name": "shop:1", "repository": "shop", "tag": "1"}, "labels": {"tier": "web"},
            "privileged": False, "capabilities": ["CAP_CHOWN", "CAP_NET_RAW"], "host_mounts": ["/var/run"],
            "user": 0, "runtime": "runc"}


def write(tmp_path, text, name="policy.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_smallest_policy_file_decides_on_host_labels_and_the_image_digest(tmp_path):
    policy = policy_file.load(write(tmp_path, """
        - policy: Only pinned images on PCI hosts
          condition: host.label[pci] = "true" and container.image.digest = ""
          verdict: deny
          gate: true
        """))
    assert policy.problems == [] and policy.gating
    verdict = decide(policy, UNPINNED, HOST)
    assert (verdict.verdict, verdict.rule, verdict.gated) == ("deny", "Only pinned images on PCI hosts", True)
    assert "policy.yaml:3" in verdict.why
    pinned = {**UNPINNED, "image": {**UNPINNED["image"], "digest": "sha256:ab"}}
    assert decide(policy, pinned, HOST).verdict == "allow"
    assert decide(policy, UNPINNED, {**HOST, "labels": {}}).rule is None


def test_order_default_and_the_fields_of_identity_and_live_state(tmp_path):
    text = """
        - settings: {{order: {order}, default: {default}}}
        - policy: Web tier noted
          condition: container.label[tier] = web and container.type = runc
          verdict: alert
        - policy: Raw sockets and host mounts denied
          condition: container.capabilities = CAP_NET_RAW and container.host_mounts startswith /var/run
          verdict: deny
          forensics: {{capture: full, priority: warning, ttl: 90d, weight: 3}}
        - policy: An image with a case here waits
          condition: host.image_cases > 0 and container.user = 0
          verdict: deny
        """
    first = policy_file.load(write(tmp_path, text.format(order="first-match", default="deny")))
    assert first.problems == []
    verdict = decide(first, UNPINNED, HOST)
    assert (verdict.verdict, verdict.rule) == ("alert", "Web tier noted")
    assert verdict.matched == ("Web tier noted", "Raw sockets and host mounts denied")
    # first-match still gives the containers the forensics settings of a later matching rule
    assert verdict.forensics == policy_file.Forensics("full", "WARNING", 90 * 86400.0, 3.0)
    strictest = policy_file.load(write(tmp_path, text.format(order="strictest", default="deny")))
    assert decide(strictest, UNPINNED, HOST).rule == "Raw sockets and host mounts denied"
    assert decide(strictest, UNPINNED, {**HOST, "image_cases": 2}).matched[-1] == "An image with a case here waits"
    assert decide(first, {"id": "bare"}, HOST).verdict == "deny"  # nothing matched: the default


def test_each_problem_names_file_line_and_reason_and_rejects_only_its_item(tmp_path):
    path = write(tmp_path, """
        - policy: Good
          condition: container.privileged = true
          verdict: deny
        - policy: Bad verdict
          condition: container.privileged = true
          verdict: maybe
        - policy: Bad field
          condition: container.nonsense = 1
          verdict: deny
        - policy: Bad syntax
          condition: container.privileged = (
          verdict: deny
        - response: No actions
          rule: Some rule
          actions: [explode]
        - settings: {gate: sometimes, gate_deadline: soon}
        - host: {labels_file: missing.yaml}
        - frobnicate: true
        """)
    policy = policy_file.load(path)
    assert [r.name for r in policy.rules] == ["Good"]
    problems = [(p.line, p.reason) for p in policy.problems]
    assert all(p.path == str(path) for p in policy.problems)
    assert problems[0][0] == 5 and "verdict must be one of allow, alert, deny, not 'maybe'" in problems[0][1]
    assert problems[1][0] == 9 and "container.nonsense" in problems[1][1]
    assert problems[2][0] == 12 and "condition:" in problems[2][1]
    assert problems[3][0] == 14 and "actions must be a list of kill_process" in problems[3][1]
    assert problems[4][0] == 17 and "gate must be one of rules, all, off" in problems[4][1]
    assert problems[5][0] == 18 and "missing.yaml: cannot read" in problems[5][1]
    assert problems[6][0] == 19 and "exactly one of policy, response, protect, host, settings" in problems[6][1]
    assert policy.settings == policy_file.Settings()  # the broken settings item changed nothing


def test_settings_host_labels_file_and_isolation_destinations(tmp_path):
    write(tmp_path, "pci: true\nzone: eu-1\n", "labels.yaml")
    policy = policy_file.load(write(tmp_path, """
        - host: {labels: {rack: r7}, labels_file: labels.yaml}
        - settings:
            failure: closed
            gate_deadline: 250ms
            kill_budget: 2
            budget_window: 5m
            workload: label[app]
            isolate_allow: [10.0.0.53/32:53, "192.0.2.0/24", "[2001:db8::1]:514"]
        - response: Kill on critical
          priority: critical
          actions: [kill_container, capture]
          mode: dry-run
        """))
    assert policy.problems == []
    assert policy.host_labels == {"rack": "r7", "pci": "true", "zone": "eu-1"}
    s = policy.settings
    assert (s.failure, s.gate_deadline_s, s.kill_budget, s.budget_window_s, s.workload) == \
        ("closed", 0.25, 2, 300.0, "label[app]")
    assert s.isolate_allow == (("10.0.0.53/32", 53), ("192.0.2.0/24", 0), ("2001:db8::1/128", 514))
    (response,) = policy.responses
    assert response.matches("Any", [], "EMERGENCY") and not response.matches("Any", [], "ERROR")
    assert not policy.gating  # gate: rules, and no rule asks for it


def test_host_fields_are_for_policy_files_and_a_rules_actions_are_checked(tmp_path):
    rules = write(tmp_path, """
        - rule: Host fact in a rule
          desc: d
          condition: host.label[pci] = "true" and evt.type = execve
          output: o
          priority: WARNING
        - rule: Unknown action
          desc: d
          condition: evt.type = execve
          output: o
          priority: WARNING
          actions: [kill_container, nuke]
        - rule: Labels in rules
          desc: d
          condition: evt.type = execve and container.label[app] = web
          output: o
          priority: WARNING
          actions: [kill_container, isolate]
        """, "rules.yaml")
    ruleset = rule_loader.load([rules])
    reasons = {p.name: p.reason for p in ruleset.problems}
    assert "host.* fields are for policy files" in reasons["Host fact in a rule"]
    assert "actions must be a list of" in reasons["Unknown action"]
    assert list(ruleset.conditions) == ["Labels in rules"]

"""The policy stage in the whole pipeline, without root (a fake kernel side): a new
container gets a verdict record and its kernel verdict; a broken policy file never
replaces the running one, a good one does; the gate is armed only after start-up."""

import textwrap
import time

from sensor import Sensor
from sensor.testing.events import C, batch_of, raw, syscall
from sensor.testing.kernel import FakeKernel

CGROUP = 987_650_001
PATH = b"/mayfly-unit-policy".ljust(256, b"\0")
GOOD = """
- settings: {gate: all}
- policy: Bare containers denied
  condition: container.id startswith mayfly-unit and container.image = ""
  verdict: deny
"""


def reloaded(sensor, before):
    sensor.reload()
    deadline = time.monotonic() + 10
    while sensor._reloading.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    sensor.poll(0)
    return sensor.policy is not before


def test_verdicts_and_reloads(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(GOOD))
    got = []
    with Sensor(policy=path, kernel=FakeKernel, identity_deadline=0, on_record=got.append) as sensor:
        assert sensor.kernel.gate
        sensor.kernel.feed(batch_of(raw("cgroup", id=CGROUP, op=C["MAYFLY_CGROUP_MKDIR"], level=1, path=PATH,
                                        ktime=1_000_000)))
        for _ in range(3):
            sensor.poll(0)
        (record,) = [r for r in got if r["kind"] == "policy"]
        assert (record["verdict"], record["rule"], record["mode"]) == ("deny", "Bare containers denied", "enforce")
        assert record["container"]["id"] == "mayfly-unit-policy"
        assert sensor.kernel.verdict_of[CGROUP] == "deny"

        good = sensor.policy
        path.write_text(textwrap.dedent(GOOD) + "- policy: Broken\n  condition: container.id = (\n  verdict: deny\n")
        assert not reloaded(sensor, good) and sensor.kernel.gate  # the running policy stays
        path.write_text("- settings: {gate: off}\n")
        assert reloaded(sensor, good) and not sensor.kernel.gate


def test_a_protected_container_is_never_a_target_and_the_kernel_never_stops_there(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("- rule: Shadow read\n  desc: d\n  condition: evt.type = openat and fd.name = /etc/shadow and "
                     "container.id != host\n  output: o\n  priority: CRITICAL\n  actions: [kill_container]\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text("- protect: The log shipper\n  condition: container.id = mayfly-unit-shipper\n")
    shipper, other = CGROUP + 10, CGROUP + 11
    got = []
    with Sensor(rules=[rules], policy=policy, kernel=FakeKernel, identity_deadline=0, on_record=got.append) as sensor:
        for cgroup, name in ((shipper, b"/mayfly-unit-shipper"), (other, b"/mayfly-unit-other")):
            sensor.kernel.feed(batch_of(raw("cgroup", id=cgroup, op=C["MAYFLY_CGROUP_MKDIR"], level=1,
                                            path=name.ljust(256, b"\0"), ktime=1_000_000)))
        sensor.kernel.feed(batch_of(*(syscall("openat", 3, pid=800 + k, ktime=2_000_000 + k, dirfd=-100, flags=0,
                                              name="/etc/shadow", header={"cgroup_id": cgroup})
                                      for k, cgroup in enumerate((shipper, other)))))
        for _ in range(4):
            sensor.poll(0)
        assert shipper in sensor.kernel.hosts and other not in sensor.kernel.hosts
    actions = [(r["target"]["container"]["cgroup_id"], r["action"], r["outcome"]) for r in got if r["kind"] == "action"]
    assert (shipper, "kill_container", "skipped: protected by the policy") in actions
    # the other is a target: the last-instance guard turns the kill into isolate and freeze
    assert [(a, o) for c, a, o in actions if c == other][0] == ("isolate", "done")
    assert other in sensor.kernel.isolated

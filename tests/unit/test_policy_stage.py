"""The policy stage in the whole pipeline, without root (a fake kernel side): a new
container gets a verdict record and its kernel verdict; a broken policy file never
replaces the running one, a good one does; the gate is armed only after start-up."""

import textwrap
import time

from sensor import Sensor
from sensor.testing.events import C, batch_of, raw
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

"""Issue 17's responses with real runc containers: a kill rule stops a script before its
next step; a spent kill budget downgrades to isolate and freeze; the last-instance guard
holds; dry-run records and changes nothing; an isolated container reaches its allowed
destination on a test host (a pyroute2 network namespace) and nothing else."""

import os
import signal
import time

import pytest

from sensor.testing.containers import wait_until
from sensor.testing.network import PEER_ADDRESS, PeerHost
from sensor.testing.polled import PolledSensor

# Reads the stand-in for /etc/shadow from the shell itself (a redirection: no exec), then
# at once writes a marker (its next step, a shell builtin): only a process held at its act
# can be stopped before it.
READS_THEN_MARKS = ["/bin/sh", "-c", "read x < /etc/shadow; echo next > /marker"]
BENIGN = ["/bin/sh", "-c", "echo hello > /tmp/note; sleep 0.3; echo next > /marker"]  # a shell entrypoint
SLEEPER = ["/bin/sh", "-c", "sleep 30"]
RULES = """
- rule: Shadow read
  desc: test rule
  condition: evt.type in (open, openat, openat2) and fd.name = /etc/shadow and container.id != host
  output: shadow read by %proc.name
  priority: CRITICAL
  capture: false
  actions: [{action}]
- rule: Isolated after reading the token
  desc: test rule
  condition: evt.type in (open, openat, openat2) and fd.name = /etc/token and container.id != host
  output: token read by %proc.name
  priority: WARNING
  capture: false
  actions: [isolate]
- rule: Ping is never allowed
  desc: test rule, which the kernel decides alone (the policy's kernel_kill)
  condition: evt.type in (execve, execveat) and proc.name = ping and container.id != host
  output: ping run by %proc.pname
  priority: WARNING
  capture: false
  actions: [kill_process]
"""


class Polled(PolledSensor):
    """A sensor with the test rules (RULES, `action` on the shadow read) and a policy of
    these settings."""

    def __init__(self, tmp_path, action, settings):
        (tmp_path / "rules.yaml").write_text(RULES.format(action=action))
        (tmp_path / "policy.yaml").write_text(f"- settings: {settings}\n")
        super().__init__(rules=[tmp_path / "rules.yaml"], policy=tmp_path / "policy.yaml", cases=tmp_path / "cases")

    def actions(self, container):
        return [r for r in self.records("action") if r["target"]["container"].get("id") == container.id]


@pytest.fixture
def files(tmp_path):
    for name in ("shadow", "token"):
        (tmp_path / name).write_text("root:*:19000:0:99999:7:::\n")
    return {"/etc/shadow": str(tmp_path / "shadow"), "/etc/token": str(tmp_path / "token")}


def marker(container):
    return os.path.exists(os.path.join(container.upper, "marker"))


def frozen(container):
    with open(os.path.join(container.cgroup_dir, "cgroup.freeze")) as f:
        return f.read().strip() == "1"


def test_a_kill_rule_stops_the_script_before_its_next_step_and_a_spent_budget_downgrades(rig, tmp_path, files):
    polled = Polled(tmp_path, "kill_process", "{kill_budget: 1, min_instances: 0, workload: 'label[app]'}")
    try:
        benign = rig.create(BENIGN, annotations={"app": "web"}).start()
        killed = rig.create(READS_THEN_MARKS, files=files, annotations={"app": "web"}).start()
        assert killed.wait(10) == -signal.SIGKILL
        assert benign.wait(10) == 0 and marker(benign)
        contained = rig.create(READS_THEN_MARKS, files=files, annotations={"app": "web"}).start()
        wait_until(lambda: len(polled.actions(contained)) >= 2, timeout=10)
        wait_until(lambda: frozen(contained), timeout=5)
        time.sleep(0.2)
        assert not marker(contained)  # frozen at its act: it went no further
    finally:
        polled.close()
    # A sensor that stops leaves nothing frozen (failure: open, the default): it thaws it.
    assert contained.wait(10) == 0 and marker(contained)
    assert not marker(killed)
    (kill,) = polled.actions(killed)
    assert kill["action"] == "kill_process" and kill["outcome"] == "done" and kill["mode"] == "enforce"
    assert kill["trigger"]["rule"] == "Shadow read" and kill["target"]["pid"] == kill["trigger"]["proc"]["pid"]
    assert 0 < kill["latency_ms"] < 5000
    assert polled.actions(benign) == []
    ladder = polled.actions(contained)
    assert [a["action"] for a in ladder] == ["isolate", "freeze"]
    for action in ladder:
        assert action["outcome"] == "done"
        assert action["downgraded"]["from"] == ["kill_process"] and action["downgraded"]["to"] == ["isolate", "freeze"]
        assert "kill budget spent" in action["downgraded"]["why"] and "label[app]=web" in action["downgraded"]["why"]
    for container in (benign, killed, contained):
        container.delete()


def test_the_last_instance_guard_dry_run_and_isolation(rig, tmp_path, files):
    polled = Polled(tmp_path, "kill_container", "{min_instances: 1, workload: 'label[app]', kernel_kill: true, "
                                                f"isolate_allow: ['{PEER_ADDRESS}/32:7001']}}")
    made = []
    try:
        alone = rig.create(READS_THEN_MARKS, files=files, annotations={"app": "db"}).start()
        made.append(alone)
        wait_until(lambda: len(polled.actions(alone)) >= 2, timeout=10)
        guarded = polled.actions(alone)
        assert [a["action"] for a in guarded] == ["isolate", "freeze"]
        assert all("last-instance guard" in a["downgraded"]["why"] for a in guarded)
        assert frozen(alone) and not marker(alone)  # still there, held still
        polled.sensor.thaw(alone.id).result(5)
        assert alone.wait(10) == 0

        sibling = rig.create(SLEEPER, annotations={"app": "db"}).start()  # a second instance of the workload
        killed = rig.create(READS_THEN_MARKS, files=files, annotations={"app": "db"}).start()
        made += [sibling, killed]
        assert killed.wait(10) == -signal.SIGKILL and not marker(killed)
        (kill,) = polled.actions(killed)
        assert kill["action"] == "kill_container" and kill["outcome"] == "done" and "downgraded" not in kill
        sibling.kill()

        # Killed in the kernel at its exec: ping runs no instruction (it would print PING);
        # the script goes on.
        pinging = rig.create(["/bin/sh", "-c", "/bin/ping -c 1 127.0.0.1; echo $? > /marker"],
                             annotations={"app": "tools"}).start()
        made.append(pinging)
        assert pinging.wait(10) == 0
        assert "PING" not in pinging.output()[0]
        assert open(os.path.join(pinging.upper, "marker")).read().strip() == str(128 + signal.SIGKILL)
        wait_until(lambda: polled.actions(pinging), timeout=5)
        (kernel_kill,) = polled.actions(pinging)
        assert (kernel_kill["action"], kernel_kill["outcome"], kernel_kill["latency_ms"]) == \
            ("kill_process", "done in the kernel", 0)

        polled.sensor.set_mode("dry-run").result(5)
        dry = rig.create(READS_THEN_MARKS, files=files, annotations={"app": "db"}).start()
        made.append(dry)
        assert dry.wait(10) == 0 and marker(dry)  # dry-run changed nothing
        wait_until(lambda: polled.actions(dry), timeout=5)
        assert [(a["action"], a["outcome"], a["mode"]) for a in polled.actions(dry)] == \
            [("isolate", "dry-run: not done", "dry-run"), ("freeze", "dry-run: not done", "dry-run")]
        polled.sensor.set_mode(None).result(5)

        with PeerHost([7001, 7002]) as peer:
            reach = "; ".join(f"echo x | nc -w 1 {PEER_ADDRESS} {port} && echo reached {port}" for port in (7001, 7002))
            isolated = rig.create(["/bin/sh", "-c", f"read x < /etc/token; sleep 0.2; {reach}; true"], files=files,
                                  netns=peer.container_ns, annotations={"app": "isolated"}).start()
            made.append(isolated)
            assert isolated.wait(15) == 0
            stdout, _ = isolated.output()
            assert peer.accepted == {7001: 1, 7002: 0}, stdout
            assert stdout.split() == ["reached", "7001"]
        (isolate,) = polled.actions(isolated)
        assert isolate["action"] == "isolate" and isolate["outcome"] == "done"
    finally:
        polled.close()
        for container in made:
            container.delete()

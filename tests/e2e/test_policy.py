"""Issue 17's placement policy and spawn gate with real runc containers: a denied
container's entrypoint never runs, an allowed one runs, a gated one runs once released;
past the deadline a held process fails closed; a sensor that crashed leaves nothing held
or frozen once the next one starts."""

import os
import signal
import subprocess
import time
import uuid

from sensor import Sensor
from sensor.system import host
from sensor.testing.containers import wait_until
from sensor.testing.running import RunningSensor
from test_container_identity import read_records

WRITES_MARKER = ["/bin/sh", "-c", "echo ran > /marker; sleep 0.2"]  # a shell entrypoint, as in real images
POLICY = """
- host:
    labels: {pci: "true"}
- settings:
    gate: all
- policy: No untrusted workloads on PCI hosts
  condition: host.label[pci] = "true" and container.label[trust] = "none"
  verdict: deny
- policy: Privileged containers are noted
  condition: container.privileged = true
  verdict: alert
"""


def state_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def marker(container):
    return os.path.exists(os.path.join(container.upper, "marker"))


def test_the_gate_holds_each_new_container_until_its_verdict_and_a_denied_entrypoint_never_runs(rig, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    seen = []
    with Sensor(policy=policy, on_record=seen.append, report_interval=3600) as sensor:
        sensor.poll(0)
        denied = rig.create(WRITES_MARKER, annotations={"trust": "none"})
        allowed = rig.create(WRITES_MARKER, annotations={"trust": "full"})
        # Not polled: the sensor has no verdict for them yet, so the kernel holds each
        # one's first exec, before the entrypoint's first instruction.
        for container in (denied, allowed):
            container.start()
        wait_until(lambda: state_of(denied.pid) == "T" and state_of(allowed.pid) == "T", timeout=5)
        time.sleep(0.2)
        assert not marker(denied) and not marker(allowed)  # the held shells ran nothing
        deadline = time.monotonic() + 10
        while len([r for r in seen if r["kind"] == "policy"]) < 2 and time.monotonic() < deadline:
            sensor.poll(20)
        assert denied.wait(10) == -signal.SIGKILL and allowed.wait(10) == 0
    assert not marker(denied) and marker(allowed)
    verdicts = {r["container"]["id"]: r for r in seen if r["kind"] == "policy"}
    assert verdicts[denied.id]["verdict"] == "deny" and verdicts[denied.id]["outcome"] == "killed"
    assert verdicts[denied.id]["rule"] == "No untrusted workloads on PCI hosts"
    assert "host.label[pci]" in verdicts[denied.id]["why"]
    assert verdicts[allowed.id]["verdict"] == "allow" and verdicts[allowed.id]["outcome"] == "released"
    assert verdicts[allowed.id]["rule"] is None and "default" in verdicts[allowed.id]["why"]
    for record in (verdicts[denied.id], verdicts[allowed.id]):
        assert record["gate"]["held"] and record["gate"]["verdict_ms"] > 0
    for container in (denied, allowed):
        container.delete()

    # Once running, the verdict comes before the entrypoint: an allowed container is never held.
    with Sensor(policy=policy, on_record=seen.append, report_interval=3600) as sensor:
        seen.clear()
        sensor.poll(0)
        neighbour = rig.create(WRITES_MARKER, annotations={"trust": "full"})
        wait_until(lambda: sensor.poll(5) is not None and any(r["kind"] == "policy" for r in seen), timeout=10)
        neighbour.start()
        wait_until(lambda: sensor.poll(5) is not None and marker(neighbour), timeout=10)
        assert neighbour.wait(10) == 0
        neighbour.delete()
    (record,) = [r for r in seen if r["kind"] == "policy"]
    assert record["verdict"] == "allow" and record["outcome"] == "running" and not record["gate"]["held"]


def exec_in_new_cgroup(name, marker_path):
    """A process that joins a bare cgroup of its own (no runtime's state names it) and
    then execs a shell that would write a marker: the gate holds that exec."""
    directory = os.path.join(host.cgroup2_root(), name)
    os.mkdir(directory)
    proc = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {directory}/cgroup.procs; "
                                              f"exec /bin/sh -c 'echo ran > {marker_path}'"])
    return directory, proc


def test_past_the_deadline_fails_closed_and_a_crashed_sensors_holds_and_freezes_are_released(rig, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("""
- rule: Shadow read freezes
  desc: test rule
  condition: evt.type in (open, openat, openat2) and fd.name = /etc/shadow and container.id != host
  output: shadow read by %proc.name
  priority: CRITICAL
  capture: false
  actions: [freeze]
""")
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\n")
    closed = tmp_path / "closed.yaml"
    closed.write_text("- settings: {gate: all, failure: closed, gate_deadline: 300ms}\n")
    output = tmp_path / "closed.msgpack"
    marker_closed = tmp_path / "marker-closed"
    sensor = RunningSensor(tmp_path, "--policy", str(closed), "--identity-deadline", "30",
                           "--output", f"file:{output}")
    try:
        directory, proc = exec_in_new_cgroup(f"mayfly-gate-{uuid.uuid4().hex[:8]}", marker_closed)
        assert proc.wait(10) == -signal.SIGKILL  # held at its exec, then killed past the deadline
        wait_until(lambda: any(r["kind"] == "policy" for r in read_records(output)), timeout=10)
    finally:
        sensor.stop()
        os.rmdir(directory)
    assert not marker_closed.exists()
    (record,) = [r for r in read_records(output) if r["kind"] == "policy"]
    assert record["failed"] == "closed" and record["outcome"] == "killed" and record["gate"]["held"]

    # A sensor that holds a process at the gate and froze a container, then crashes.
    patient = tmp_path / "patient.yaml"
    patient.write_text("- settings: {gate: all, failure: open, gate_deadline: 60s}\n")
    (tmp_path / "b").mkdir()
    crashing = RunningSensor(tmp_path / "b", "--policy", str(patient), "--identity-deadline", "60",
                             "--rules", str(rules))
    marker_open = tmp_path / "marker-open"
    frozen = rig.create(["/bin/sh", "-c", "read x < /etc/shadow; echo ran > /marker"],
                        files={"/etc/shadow": str(shadow)})
    try:
        frozen.start()
        wait_until(lambda: os.path.exists(os.path.join(frozen.cgroup_dir, "cgroup.freeze"))
                   and open(os.path.join(frozen.cgroup_dir, "cgroup.freeze")).read().strip() == "1", timeout=10)
        directory, proc = exec_in_new_cgroup(f"mayfly-gate-{uuid.uuid4().hex[:8]}", marker_open)
        wait_until(lambda: state_of(proc.pid) == "T", timeout=10)
        crashing.proc.send_signal(signal.SIGKILL)
        crashing.proc.wait(10)
        time.sleep(0.5)
        assert state_of(proc.pid) == "T" and not marker_open.exists() and not marker(frozen)  # left held

        # The next sensor finds both in its first second, and releases them (failure: open).
        (tmp_path / "c").mkdir()
        opened = tmp_path / "open.yaml"
        opened.write_text("- settings: {gate: all, failure: open, gate_deadline: 300ms}\n")
        restarted = RunningSensor(tmp_path / "c", "--policy", str(opened))
        try:
            assert proc.wait(10) == 0 and marker_open.exists()
            assert frozen.wait(10) == 0 and marker(frozen)
        finally:
            restarted.stop()
    finally:
        frozen.delete()
        os.rmdir(directory)

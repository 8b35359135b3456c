"""Issue 17's placement policy and spawn gate with real runc containers: a denied
container's entrypoint never runs, an allowed one runs, a gated one runs once released;
past the deadline a held process fails closed; a sensor that crashed leaves nothing held
or frozen once the next one starts."""

import os
import signal
import subprocess
import time
import uuid

from sensor.system import host
from sensor.testing.containers import wait_until
from sensor.testing.polled import PolledSensor
from sensor.testing.running import RunningSensor

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


def exec_in_new_cgroup(name, marker_path):
    """A process that joins a bare cgroup of its own (no runtime's state names it) and
    then execs a shell that writes a marker: the gate holds that exec, and no runtime's
    state gives its identity before the identity deadline."""
    directory = os.path.join(host.cgroup2_root(), name)
    # Made by the shell, not by this process: a sensor in this process does not see its own acts.
    proc = subprocess.Popen(["/bin/sh", "-c", f"mkdir {directory} && echo $$ > {directory}/cgroup.procs && "
                                              f"exec /bin/sh -c 'echo ran > {marker_path}'"])
    wait_until(lambda: os.path.isdir(directory), timeout=5)
    return directory, proc


class Polled(PolledSensor):
    def policies(self, cgroup_id=None):
        return [r for r in self.records("policy") if cgroup_id in (None, r["container"]["cgroup_id"])]


def test_the_gate_holds_each_new_container_until_its_verdict_and_a_denied_entrypoint_never_runs(rig, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    polled = Polled(policy=policy, identity_deadline=1.0)
    made = []
    try:
        # Created and started at once (`runc run`): the entrypoint's exec comes as the
        # verdict is made. A denied one never runs: held and killed, or killed at its exec.
        denied = rig.create(WRITES_MARKER, annotations={"trust": "none"}, started=True)
        allowed = rig.create(WRITES_MARKER, annotations={"trust": "full"}, started=True)
        made += [denied, allowed]
        assert denied.wait(10) == -signal.SIGKILL and allowed.wait(10) == 0
        assert not marker(denied) and marker(allowed)
        wait_until(lambda: polled.policies(denied.cgroup_id) and polled.policies(allowed.cgroup_id), timeout=5)
        (refused,) = polled.policies(denied.cgroup_id)
        assert (refused["verdict"], refused["rule"]) == ("deny", "No untrusted workloads on PCI hosts")
        assert refused["outcome"] == "killed" and "host.label[pci]" in refused["why"]
        (admitted,) = polled.policies(allowed.cgroup_id)
        assert admitted["verdict"] == "allow" and admitted["rule"] is None and "default" in admitted["why"]
        assert admitted["outcome"] == ("released" if admitted["gate"]["held"] else "running")

        # Created first, as Docker and containerd do: the verdict comes before the start.
        neighbour = rig.create(WRITES_MARKER, annotations={"trust": "full"})
        made.append(neighbour)
        wait_until(lambda: polled.policies(neighbour.cgroup_id), timeout=10)
        neighbour.start()
        assert neighbour.wait(10) == 0 and marker(neighbour)
        (record,) = polled.policies(neighbour.cgroup_id)
        assert record["outcome"] == "running" and not record["gate"]["held"]

        # A new cgroup whose identity takes its deadline (1 s) to come: held until its
        # verdict, then released, and it runs.
        marker_released = tmp_path / "marker-released"
        directory, proc = exec_in_new_cgroup(f"mayfly-gate-{uuid.uuid4().hex[:8]}", marker_released)
        try:
            wait_until(lambda: state_of(proc.pid) == "T", timeout=5)
            time.sleep(0.3)
            assert state_of(proc.pid) == "T" and not marker_released.exists()  # held: it ran nothing
            assert proc.wait(10) == 0 and marker_released.exists()
        finally:
            proc.wait(10)
            os.rmdir(directory)
        def of_bare():
            return [r for r in polled.policies() if r["container"]["id"] == os.path.basename(directory)]
        wait_until(of_bare, timeout=5)
        (released,) = of_bare()
        assert released["outcome"] == "released" and released["gate"]["verdict_ms"] >= 300

        # Past the deadline, a policy that fails closed kills what the gate holds.
        policy.write_text("- settings: {gate: all, failure: closed, gate_deadline: 300ms}\n")
        before = polled.sensor.policy
        polled.sensor.reload()
        wait_until(lambda: polled.sensor.policy is not before, timeout=10)
        marker_closed = tmp_path / "marker-closed"
        directory, proc = exec_in_new_cgroup(f"mayfly-gate-{uuid.uuid4().hex[:8]}", marker_closed)
        try:
            assert proc.wait(10) == -signal.SIGKILL and not marker_closed.exists()
        finally:
            os.rmdir(directory)
        wait_until(lambda: [r for r in polled.policies() if r.get("failed")], timeout=5)
        (record,) = [r for r in polled.policies() if r.get("failed")]
        assert record["failed"] == "closed" and record["outcome"] == "killed" and record["gate"]["held"]
    finally:
        polled.close()
        for container in made:
            container.delete()


def test_a_crashed_sensors_holds_and_freezes_are_released_by_the_next_one(rig, tmp_path):
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

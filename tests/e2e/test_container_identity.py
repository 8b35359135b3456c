"""Issue 4's acceptance: `mayfly run` names the runc container behind every record, even
for containers that live well under a second, across churn and a sensor restart."""

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from sensor.testing.running import RunningSensor

from sensor import read_stream
from sensor.testing.containers import wait_until

ANNOTATIONS = {"org.mayfly.test/case": "identity", "io.kubernetes.cri.sandbox-name": "shop-7d9f"}


def read_records(path):
    with open(path, "rb") as f:
        return list(read_stream(f))


def of_cgroup(records, cgroup_id):
    return [r for r in records if r.get("container", {}).get("cgroup_id") == cgroup_id]


def assert_named(mine, container_id):
    """Every record names the container fully: runc, its id and its annotations."""
    for record in mine:
        container = record["container"]
        assert container["id"] == container_id and container["runtime"] == "runc", record
        assert container["labels"] == ANNOTATIONS and container["k8s"] == {"pod": {"name": "shop-7d9f"}}, record
        assert "resolved" not in container, record


def test_a_container_that_runs_true_is_named_in_every_record(rig, tmp_path):
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--emit-events", "--output", f"file:{output}", "--report-interval", "3600")
    try:
        result = rig.run(["/bin/true"], annotations=ANNOTATIONS)
    finally:
        sensor.stop()
    mine = of_cgroup(read_records(output), result.cgroup_id)
    assert_named(mine, result.id)  # syscall counts too
    mine = [r for r in mine if r["kind"] in ("container", "event")]
    kinds = [(r["kind"], r.get("state") or r["evt"]["type"]) for r in mine]
    assert kinds[0] == ("container", "start") and kinds[-1] == ("container", "exit")
    assert ("event", "execve") in kinds and ("event", "procexit") in kinds
    execs = [r for r in mine if r["kind"] == "event" and r["evt"]["type"] == "execve"]
    assert [r["evt"]["filename"] for r in execs] == ["/bin/true"]
    start, end = mine[0], mine[-1]
    assert start["existing"] is False and start["cgroup"] == f"/{result.id}"
    assert 0 < end["lifetime_s"] < 1.0
    exits = [r for r in mine if r["kind"] == "event" and r["evt"]["type"] == "procexit"]
    assert end["processes"] == len(exits) >= 1 and end["complete"] is True  # runc's init stages count too
    assert end["lost"] == {"rate_limited": 0, "ring_full": 0}
    assert end["events"] == sum(1 for r in mine if r["kind"] == "event")


def test_a_hundred_short_containers_are_all_resolved(rig, tmp_path):
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--emit-events=execve", "--output", f"file:{output}")
    try:
        results = [rig.run(["/bin/true", str(i)], annotations=ANNOTATIONS) for i in range(100)]
    finally:
        sensor.stop()
    records = read_records(output)
    for result in results:
        mine = of_cgroup(records, result.cgroup_id)
        assert_named(mine, result.id)
        assert [(r["kind"], r.get("state")) for r in mine if r["kind"] != "syscall_counts"] == [
            ("container", "start"), ("event", None), ("container", "exit")]


def test_a_sensor_restart_keeps_the_identity_of_running_containers(rig, tmp_path):
    first, second = tmp_path / "first.msgpack", tmp_path / "second.msgpack"
    sensor = RunningSensor(tmp_path, "--emit-events=execve", "--output", f"file:{first}")
    # The container waits for a file the test drops into its root after the restart.
    container = rig.create(["/bin/sh", "-c", "while [ ! -e /go ]; do /bin/sleep 0.05; done; /bin/true after"],
                           annotations=ANNOTATIONS)
    cgroup_id = container.cgroup_id
    try:
        container.start()
        wait_until(lambda: any(r["kind"] == "event" and r["container"]["cgroup_id"] == cgroup_id
                               for r in _readable(first)), timeout=10)
        sensor.stop()
        sensor = RunningSensor(tmp_path, "--emit-events=execve", "--output", f"file:{second}")
        open(f"/proc/{container.pid}/root/go", "w").close()  # through its mounts, not under them
        assert container.wait() == 0
    finally:
        container.delete()
        sensor.stop()
    mine = of_cgroup(read_records(second), cgroup_id)
    assert_named(mine, container.id)
    mine = [r for r in mine if r["kind"] in ("container", "event")]
    start = mine[0]
    assert (start["kind"], start["state"], start["existing"]) == ("container", "start", True)
    assert any(r["kind"] == "event" and r["evt"].get("argv") == ["/bin/true", "after"] for r in mine)
    assert mine[-1]["state"] == "exit"


def _readable(path):
    """Records written so far (the file sink flushes after each poll)."""
    try:
        return read_records(path)
    except (OSError, ValueError):
        return []


def test_churn_keeps_the_tables_and_memory_flat(rig, tmp_path):
    """Thousands of containers, two at a time: every one attributed, the container table
    back to what is alive once the grace period passes, and the sensor's RSS flat."""
    output = tmp_path / "records.msgpack"
    # No rules: this is about the container table and memory. (With the built-in rules
    # and host events emitted, every host open is decoded for them, and two-at-a-time
    # churn outruns the sensor on this VM: the losses are counted; issue 5's engine work.)
    no_rules = tmp_path / "none.yaml"
    no_rules.write_text("")
    sensor = RunningSensor(tmp_path, "--emit-events=execve", "--rules", str(no_rules), "--output", f"file:{output}",
                           "--container-grace", "1", "--report-interval", "3600")

    def rss_kib():
        with open(f"/proc/{sensor.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

    def churn(n):
        assert rig.image  # built once, before two threads want it
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda i: rig.run(["/bin/true", str(i)]), range(n)))

    try:
        results = churn(500)  # warm-up: caches, buffers and arenas reach their size
        time.sleep(2)
        rss_before = rss_kib()
        results += churn(1500)
        time.sleep(2)
        rss_after = rss_kib()
    finally:
        sensor.stop()
    records = read_records(output)
    execs = {r["container"]["cgroup_id"]: r["container"] for r in records if r["kind"] == "event"}
    missing = [(r.id, r.exit_code, r.stderr[-300:]) for r in results if r.cgroup_id not in execs]
    lost = [r for r in records if r["kind"] == "lost"]
    assert missing == [], (missing, lost)
    assert all(execs[r.cgroup_id]["id"] == r.id for r in results)  # every one attributed...
    # ...and named by runc's state, unless the sensor could not look during the ~20 ms
    # between `runc create` and `runc delete` on two busy CPUs: then it says so.
    unresolved = [r.id for r in results if execs[r.cgroup_id].get("resolved") is False]
    assert all(execs[r.cgroup_id]["runtime"] == "runc" for r in results if r.id not in unresolved)
    assert len(unresolved) <= len(results) // 100, unresolved
    stopped = records[-1]
    assert stopped["state"] == "stopped"
    assert stopped["tables"]["cgroups"] < 50, stopped["tables"]  # the live cgroups, not 2,000 gone ones
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
    print(f"churn: 2000 containers, {len(unresolved)} unresolved, RSS {rss_before} -> {rss_after} KiB, "
          f"tables at stop {stopped['tables']}")


def test_a_podman_container_is_named_from_podmans_state(rig, tmp_path):
    """Podman (from Debian) with the rig's busybox image imported. The ulimits are
    explicit because this VM's root lacks CAP_SYS_RESOURCE, which podman's defaults need."""
    image = "localhost/mayfly-busybox:test"
    if subprocess.run(["podman", "image", "exists", image]).returncode:
        archive = tmp_path / "image.tar"
        subprocess.run(["tar", "-C", rig.image, "-cf", str(archive), "."], check=True)
        subprocess.run(["podman", "import", "-q", str(archive), image], check=True, capture_output=True)
    name = f"mayfly-podman-{os.getpid()}"
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--emit-events=execve", "--output", f"file:{output}")
    try:
        run = subprocess.run(["podman", "run", "--rm", "--name", name, "--network=none", "--ulimit", "nofile=1024:1024",
                              "--ulimit", "nproc=1024:1024", image, "/bin/true", "from-podman"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    finally:
        sensor.stop()
    (exec_record,) = [r for r in read_records(output) if r["kind"] == "event"
                      and r["evt"].get("argv") == ["/bin/true", "from-podman"]]
    container = exec_record["container"]
    assert (container["runtime"], container["name"]) == ("podman", name) and len(container["id"]) == 64
    assert container["image"]["name"] == image and container["image"]["tag"] == "test"
    assert container["image"]["id"] and container["labels"]["io.container.manager"] == "libpod"

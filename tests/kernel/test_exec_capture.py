"""Exec events from a real runc container carry its cgroup id (the inode of its cgroup2 dir)."""

import os

from sensor import host

RUNS = 7  # prime: doubled or missed events show


def drain(sensor):
    """Everything the kernel had committed: the container has exited, so its events are in."""
    while sensor.poll(0):
        pass
    return sensor.seen


def test_every_exec_in_a_container_carries_its_cgroup_id(sensor, rig):
    container = rig.create(["/bin/sh", "-c", f"for i in {' '.join(map(str, range(RUNS)))}; do /bin/true; done"])
    try:
        cgroup_id = container.cgroup_id
        assert cgroup_id == os.stat(container.cgroup_dir).st_ino
        assert container.cgroup_dir.startswith(host.cgroup2_root())
        container.start()
        assert container.wait() == 0
    finally:
        container.delete()

    execs = [r for r in drain(sensor) if r["kind"] == "exec" and r["cgroup_id"] == cgroup_id]
    assert [r["filename"] for r in execs] == ["/bin/sh"] + ["/bin/true"] * RUNS
    entrypoint, *children = execs
    assert all(r["proc"]["ppid"] == entrypoint["proc"]["pid"] for r in children)
    assert len({r["proc"]["pid"] for r in children}) == RUNS
    assert all(r["proc"]["comm"] == "true" and r["proc"]["uid"] == 0 for r in children)


def test_host_execs_are_not_attributed_to_the_container(sensor, rig):
    result = rig.run(["/bin/true"])
    os.system("/bin/true")
    records = [r for r in drain(sensor) if r["kind"] == "exec"]
    in_container = [r for r in records if r["cgroup_id"] == result.cgroup_id]
    assert [r["filename"] for r in in_container] == ["/bin/true"]
    assert any(r["filename"] == "/bin/true" and r["cgroup_id"] != result.cgroup_id for r in records)

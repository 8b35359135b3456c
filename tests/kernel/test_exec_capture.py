"""Exec events from a real runc container carry its cgroup id (the inode of its cgroup2 dir)."""

import os

from capture import collect

from sensor.system import host

RUNS = 7  # prime: doubled or missed events show


def execs(records):
    return [r for r in records if r["kind"] == "event" and r["evt"]["type"] == "execve" and r["evt"]["res"] == 0]


def test_every_exec_in_a_container_carries_its_cgroup_id(sensor, rig):
    container = rig.create(["/bin/sh", "-c", f"for i in {' '.join(map(str, range(RUNS)))}; do /bin/true x$i; done"])
    try:
        cgroup_id = container.cgroup_id
        assert cgroup_id == os.stat(container.cgroup_dir).st_ino
        assert container.cgroup_dir.startswith(host.cgroup2_root())
        container.start()
        assert container.wait() == 0
    finally:
        container.delete()

    entrypoint, *children = execs(collect(sensor, cgroup_id))
    assert entrypoint["evt"]["filename"] == "/bin/sh" and entrypoint["proc"]["comm"] == "sh"
    # runc's default capabilities (its bundle's spec): not privileged; no host path mounted
    assert entrypoint["container"] == {"id": container.id, "runtime": "runc", "cgroup_id": cgroup_id,
                                       "created": entrypoint["container"]["created"], "privileged": False,
                                       "capabilities": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                                       "user": 0}
    # Its user's name from the container's own /etc/passwd; what /proc said of it, if it
    # was still there when its exec was applied, in its own view
    assert entrypoint["proc"]["user"] == "root"
    assert entrypoint["proc"].get("cwd", "/") == "/"
    caps = sum(1 << n for n in (5, 10, 29))  # runc's defaults: KILL, NET_BIND_SERVICE, AUDIT_WRITE
    assert entrypoint["proc"].get("cap_effective", caps) == caps
    assert [r["evt"]["argv"] for r in children] == [["/bin/true", f"x{i}"] for i in range(RUNS)]
    assert [r["proc"]["cmdline"] for r in children] == [f"/bin/true x{i}" for i in range(RUNS)]
    assert all(r["evt"]["filename"] == "/bin/true" == r["proc"]["exe"] for r in children)
    assert all(r["proc"]["ppid"] == entrypoint["proc"]["pid"] for r in children)
    assert len({r["proc"]["pid"] for r in children}) == RUNS
    assert all(r["proc"]["comm"] == "true" and r["proc"]["uid"] == 0 for r in children)


def test_host_execs_are_not_attributed_to_the_container(sensor, rig):
    result = rig.run(["/bin/true"])
    in_container = execs(collect(sensor, result.cgroup_id))
    os.system("/bin/true")
    ours = host.cgroup_id(host.cgroup2_dir_of())
    on_host = execs(collect(sensor, ours))
    assert [r["evt"]["filename"] for r in in_container] == ["/bin/true"]
    assert ours != result.cgroup_id
    assert "/bin/true" in [r["evt"]["filename"] for r in on_host]


def test_long_argv_is_cut_and_flagged(sensor, rig):
    words = [f"argument-{i:03d}" for i in range(60)]
    result = rig.run(["/bin/true", *words])
    (event,) = execs(collect(sensor, result.cgroup_id))
    assert event["evt"]["truncated"] is True
    argv = event["evt"]["argv"]
    assert argv[0] == "/bin/true" and argv[1:] == words[:len(argv) - 1] and len(argv) < 61

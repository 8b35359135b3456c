"""Process and cgroup lifecycle events, from real runc containers."""

from capture import collect, drain, events

N = 7  # prime


def test_fork_events_name_each_child(sensor, rig):
    result = rig.run(["/bin/sh", "-c", f"for i in {' '.join(['x'] * N)}; do /bin/true; done"])
    records = events(collect(sensor, result.cgroup_id))
    (shell,) = [r for r in records if r["evt"]["type"] == "execve" and r["evt"]["filename"] == "/bin/sh"]
    forks = [r for r in events(records, "fork") if r["proc"]["pid"] == shell["proc"]["pid"]]
    children = [r for r in events(records, "execve") if r["evt"]["filename"] == "/bin/true"]
    assert len(forks) == N
    assert [f["evt"]["child_pid"] for f in forks] == [c["proc"]["pid"] for c in children]
    assert all(f["proc"]["comm"] == "sh" and f["evt"]["clone_flags"] & 0x10000 == 0 for f in forks)


def test_exit_codes_and_fatal_signals(sensor, rig):
    script = (f"for i in {' '.join(['x'] * N)}; do /bin/sh -c 'exit 7'; done; "
              f"for i in {' '.join(['x'] * N)}; do /bin/sleep 30 & kill -9 $!; wait $!; done; exit 3")
    result = rig.run(["/bin/sh", "-c", script])
    assert result.exit_code == 3
    records = events(collect(sensor, result.cgroup_id))
    shell = next(r["proc"]["pid"] for r in records if r["evt"].get("filename") == "/bin/sh")
    exits = [r for r in events(records, "procexit") if shell in (r["proc"]["pid"], r["proc"]["ppid"])]
    codes = [(e["evt"]["exit_code"], e["evt"]["signal"]) for e in exits]
    assert codes.count((7, 0)) == N
    sevens = [e["proc"] for e in exits if e["evt"]["exit_code"] == 7]
    assert all(p["exe"] == "/bin/sh" and p["cmdline"] == "/bin/sh -c exit 7" for p in sevens)
    assert codes.count((-1, 9)) == N
    assert codes[-1] == (3, 0)  # the container's own shell, last
    assert len(codes) == 2 * N + 1


def test_cgroup_mkdir_and_rmdir_of_a_container(sensor, rig):
    container = rig.create(["/bin/true"])
    cgroup_id = container.cgroup_id
    container.start()
    container.wait()
    container.delete()
    drain(sensor)
    lifecycle = [r["evt"] for r in events(sensor.seen) if r["evt"]["type"].startswith("cgroup_")
                 and r["evt"]["id"] == cgroup_id]
    sensor.seen.clear()
    assert [e["type"] for e in lifecycle] == ["cgroup_mkdir", "cgroup_rmdir"]
    assert all(e["path"] == f"/{container.id}" and e["level"] == 1 for e in lifecycle)

"""The flight recorder keeps a container's events as the kernel captured them (its
drained rows, whatever sinks emit), lifecycle events included."""

from capture import collect

from sensor.kernel import syscalls


def test_a_containers_events_are_recorded_as_captured(sensor, rig):
    result = rig.run(["/bin/sh", "-c", "cat /etc/hostname > /dev/null; echo done"])
    assert result.exit_code == 0 and result.stdout == "done\n"
    collect(sensor, result.cgroup_id)
    kept = sensor.recorder.events(result.cgroup_id)
    table = syscalls.table()
    opened = {table.by_nr[int(nr)].name for rows in kept["syscall"] for nr in rows["nr"]}
    assert {"execve"} <= opened and opened & {"open", "openat"}
    assert len(kept["exit"][0]) >= 1  # the shell's and cat's exits: lifecycle events too
    assert all(int(c) == result.cgroup_id for rows in kept["syscall"] for c in rows["hdr"]["cgroup_id"])

"""32-bit (ia32) processes: their execs are seen with their arguments and marked, and
their other syscalls, which Mayfly does not decode yet, are counted rather than
mistaken for the 64-bit syscalls that share their numbers."""

from capture import collect, drain, events

RUNS = 5  # prime

EXEC_FROM_32 = """
#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
int main(void) {
    for (int i = 0; i < %d; i++) {
        if (fork() == 0) {
            char *args[] = {"/bin/true", "from-ia32", NULL};
            execv(args[0], args);
            _exit(127);
        }
        wait(NULL);
    }
    return 0;
}
""" % RUNS


def test_ia32_execs_are_seen_and_marked(sensor, rig):
    helper = rig.compile_static("exec32", EXEC_FROM_32, flags=("-m32",))
    result = rig.run(["/usr/local/bin/exec32"], files={"/usr/local/bin/exec32": helper})
    assert result.exit_code == 0, result.stderr
    drain(sensor)
    compat = sum(r["count"] for r in sensor.seen if r["kind"] == "lost" and r["reason"] == "compat_syscall")
    records = collect(sensor, result.cgroup_id)
    execs = [r["evt"] for r in events(records, "execve")]
    assert execs[0] == {"type": "execve", "res": 0, "filename": "/usr/local/bin/exec32",
                        "argv": ["/usr/local/bin/exec32"], "compat": True}
    assert execs[1:] == [{"type": "execve", "res": 0, "filename": "/bin/true", "argv": ["/bin/true", "from-ia32"]}
                         ] * RUNS
    # Its ia32 syscalls are not decoded as the 64-bit ones with the same numbers, and
    # those that collide with a captured number are counted as not decoded.
    assert compat > 0
    assert not [r for r in events(records) if r["proc"]["comm"] == "exec32" and r["evt"]["type"] not in
                ("execve", "fork", "procexit")]

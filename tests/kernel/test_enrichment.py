"""What records say beyond the event itself: the process's lineage and what an fd is,
from real containers (unit tests cover the tables' rules)."""

import os
import socket

from capture import collect, events, run_fire

N = 5  # prime


def test_stdio_redirected_to_a_tcp_connection_is_named(sensor, rig, fire, listener):
    port = listener.getsockname()[1]
    fired, _ = run_fire(sensor, rig, fire, "redirect_stdio", N, port, host_network=True)
    dups = [r["evt"] for r in fired if r["evt"]["type"] == "dup2"]
    assert [e["newfd"] for e in dups] == [0, 1] * N
    for evt in dups:
        fd = evt["fd"]
        assert (fd["num"], fd["type"], fd["l4proto"], fd["role"]) == (evt["newfd"], "ipv4", "tcp", "client")
        assert fd["remote"] == {"family": "inet", "addr": "127.0.0.1", "port": port}
        assert fd["name"] == f"->127.0.0.1:{port}"


def test_records_name_the_parent_and_ancestors(sensor, rig):
    result = rig.run(["/bin/sh", "-c", "/bin/sh -c '/bin/true deep; :'; :"])
    (true,) = [r for r in events(collect(sensor, result.cgroup_id), "execve") if r["evt"]["filename"] == "/bin/true"]
    proc = true["proc"]
    assert (proc["exe"], proc["cmdline"]) == ("/bin/true", "/bin/true deep")
    assert (proc["pname"], proc["pexe"], proc["pcmdline"]) == ("sh", "/bin/sh", "/bin/sh -c /bin/true deep; :")
    # parent, grandparent (the entrypoint shell), then runc's init that exec'd it
    assert proc["anames"][:2] == ["sh", "sh"] and len(proc["anames"]) >= 3


def test_pipes_and_socketpairs_are_known_fds(sensor, rig, fire):
    fired, _ = run_fire(sensor, rig, fire, "pipe", N)
    evts = [r["evt"] for r in fired]
    pipes = [e for e in evts if e["type"] == "pipe2"]
    pairs = [e for e in evts if e["type"] == "socketpair"]
    legacy = [e for e in evts if e["type"] == "pipe"]
    assert len(pipes) == len(pairs) == len(legacy) == N
    assert all(e["res"] == 0 and len(set(e["fds"])) == 2 for e in legacy)
    assert all(e["res"] == 0 and e["flags"] == os.O_CLOEXEC and len(set(e["fds"])) == 2 for e in pipes)
    assert all(e["res"] == 0 and e["domain"] == socket.AF_UNIX and len(set(e["fds"])) == 2 for e in pairs)
    dups = [e for e in evts if e["type"] == "dup2"]
    assert [(e["fd"]["num"], e["fd"]["type"]) for e in dups] == [(1, "pipe")] * N
    # the new fds are tracked in the kernel: their closes are captured, all six each round
    closed = [e["fd"]["type"] for e in evts if e["type"] == "close" and "fd" in e]
    assert closed.count("pipe") == 4 * N and closed.count("unix") == 2 * N

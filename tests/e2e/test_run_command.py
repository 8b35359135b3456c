"""`mayfly run`, the command behind `sudo make run`, against real runc containers."""

import os
import socket
import threading

from sensor.testing.running import RunningSensor

from sensor import read_stream

RUNS = 5  # prime


def test_make_run_shows_each_container_exec_with_its_cgroup_id(rig, tmp_path):
    output = tmp_path / "records.msgpack"
    # What `make run` starts: exec events, lines on the terminal, records in a file.
    sensor = RunningSensor(tmp_path, "--emit-events=execve,execveat", "--output", "stdout",
                           "--output", f"file:{output}", tty=True)
    try:
        result = rig.run(["/bin/sh", "-c", f"for i in {' '.join(['x'] * RUNS)}; do /bin/echo hi; done"])
        assert result.exit_code == 0 and result.stdout == "hi\n" * RUNS
    finally:
        terminal = sensor.stop()

    lines = [line for line in terminal.splitlines() if f"cgroup={result.cgroup_id} " in line]
    assert len(lines) == RUNS + 1, terminal
    assert all(f"container={result.id} " in line and " execve " in line for line in lines)
    assert lines[0].endswith("argv=['/bin/sh', '-c', 'for i in x x x x x; do /bin/echo hi; done']")
    assert all("filename=/bin/echo argv=['/bin/echo', 'hi']" in line for line in lines[1:])

    with open(output, "rb") as f:
        records = list(read_stream(f))
    assert records[0]["kind"] == "sensor" and records[0]["state"] == "ready"
    assert records[-1]["kind"] == "sensor" and records[-1]["state"] == "stopped"
    mine = [r for r in records if r["kind"] == "event" and r["container"]["cgroup_id"] == result.cgroup_id]
    assert [r["evt"]["filename"] for r in mine] == ["/bin/sh"] + ["/bin/echo"] * RUNS
    assert oct(os.stat(output).st_mode & 0o777) == "0o600"
    assert {"rules loaded", "sensor started", "sensor stopped"} <= {e["event"] for e in sensor.logs()}


def test_a_container_touching_files_network_and_privileges(rig, tmp_path):
    """Issue 3's acceptance: every kind of activity, attributed, between ready and stopped."""
    output = tmp_path / "records.msgpack"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def serve_once():
        conn, _ = server.accept()
        conn.recv(100)
        conn.close()
    threading.Thread(target=serve_once, daemon=True).start()
    sensor = RunningSensor(tmp_path, "--emit-events", "--output", f"file:{output}", "--report-interval", "3600")
    try:
        script = ("echo data > /tmp/written; /bin/chmod 755 /tmp/written; /bin/mv /tmp/written /tmp/moved; "
                  f"/bin/cat /etc/passwd > /dev/null; echo ping | /usr/bin/nc -w 1 127.0.0.1 {port}; "
                  "/bin/mount -t tmpfs none /mnt; /bin/rm /tmp/moved")
        result = rig.run(["/bin/sh", "-c", script], host_network=True)
    finally:
        sensor.stop()
        server.close()
    with open(output, "rb") as f:
        records = list(read_stream(f))
    assert (records[0]["state"], records[-1]["state"]) == ("ready", "stopped")
    mine = [r for r in records if r.get("container", {}).get("cgroup_id") == result.cgroup_id]
    assert all(r["container"]["id"] == result.id for r in mine)
    evts = [r["evt"] for r in mine if r["kind"] == "event"]

    def has(evt_type, **fields):
        return any(e["type"] == evt_type and all(e.get(k) == v for k, v in fields.items()) for e in evts)

    assert has("openat", name="/tmp/written", res=3) or has("open", name="/tmp/written")
    assert has("fchmodat", name="/tmp/written", mode=0o755) or has("chmod", name="/tmp/written", mode=0o755)
    assert has("rename", oldpath="/tmp/written", newpath="/tmp/moved") or \
        has("renameat2", oldpath="/tmp/written", newpath="/tmp/moved")
    assert has("openat", name="/etc/passwd") or has("open", name="/etc/passwd")
    assert has("connect", addr={"family": "inet", "addr": "127.0.0.1", "port": port}, res=0)
    assert has("tcp_state", new="SYN_SENT", dport=port)
    assert has("mount", target="/mnt", fstype="tmpfs", res=-1)  # EPERM: runc drops CAP_SYS_ADMIN
    assert has("unlinkat", name="/tmp/moved") or has("unlink", name="/tmp/moved")
    assert has("procexit", exit_code=0) and has("fork") and has("execve", filename="/usr/bin/nc")
    flows = [r for r in mine if r["kind"] == "flow" and r["flow"]["remote_port"] == port]
    assert flows and flows[0]["flow"]["bytes_out"] > 0
    counts = [r for r in mine if r["kind"] == "syscall_counts"]
    assert counts and counts[0]["counts"]["mount"] >= 1


def test_flow_accounting_and_syscall_counts_can_be_turned_off(rig, tmp_path):
    """`--no-flows --no-count-syscalls`: no cgroup_skb program on any packet and no
    counting, while the events themselves still come."""
    output = tmp_path / "records.msgpack"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    sensor = RunningSensor(tmp_path, "--emit-events=connect", "--no-flows", "--no-count-syscalls",
                           "--output", f"file:{output}", "--report-interval", "3600")
    try:
        result = rig.run(["/bin/sh", "-c", f"echo ping | /usr/bin/nc -w 1 127.0.0.1 {port}"], host_network=True)
    finally:
        sensor.stop()
        server.close()
    with open(output, "rb") as f:
        records = list(read_stream(f))
    assert not any(p.startswith("cgroup_skb/") for p in records[0]["programs"])
    mine = [r for r in records if r.get("container", {}).get("cgroup_id") == result.cgroup_id]
    assert any(r["kind"] == "event" and r["evt"]["type"] == "connect" and r["evt"]["addr"]["port"] == port
               for r in mine)
    assert not [r for r in records if r["kind"] in ("flow", "syscall_counts")]

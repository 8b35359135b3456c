"""Per-process fd tables from fd syscalls, in the order they happened."""

import errno
import os
import socket

from sensor.testing.events import TABLE, batch_of, decoder, inet, raw, syscall

from sensor.identity.fds import FdTable


def apply(table: FdTable, *records: bytes) -> dict:
    """The notes of the records' events, as records carry them."""
    arrays, _ = decoder().split(batch_of(*records))
    return {key: note.as_record() for key, note in table.apply(arrays).items()}


def test_a_reverse_shell_shows_stdio_redirected_to_a_network_connection():
    table = FdTable(TABLE)
    notes = apply(table,
                  syscall("socket", 3, ktime=1, domain=socket.AF_INET, socktype=socket.SOCK_STREAM),
                  syscall("connect", 0, ktime=2, fd=3, addr=inet("10.0.0.9", 4444), addrlen=16),
                  syscall("dup2", 0, ktime=3, oldfd=3, newfd=0),
                  syscall("dup2", 1, ktime=4, oldfd=3, newfd=1))
    connected = {"type": "ipv4", "name": "->10.0.0.9:4444", "l4proto": "tcp", "role": "client",
                 "remote": {"family": "inet", "addr": "10.0.0.9", "port": 4444}}
    assert notes[100, 2] == {"num": 3, **connected}
    assert notes[100, 3] == {"num": 0, **connected} and notes[100, 4] == {"num": 1, **connected}
    assert table.get(100, 0).type == "ipv4" and dict(table.get(100, 1).remote)["port"] == 4444


def test_files_directories_relative_paths_close_and_close_on_exec():
    table = FdTable(TABLE)
    apply(table,
          syscall("openat", 3, ktime=1, dirfd=-100, name="/etc", flags=os.O_DIRECTORY | os.O_RDONLY),
          syscall("openat", 4, ktime=2, dirfd=3, name="shadow", flags=os.O_RDONLY | os.O_CLOEXEC),
          syscall("open", 5, ktime=3, name="/tmp/x", flags=os.O_WRONLY | os.O_CREAT),
          syscall("memfd_create", 6, ktime=4, name="payload", flags=0),
          syscall("openat", -errno.ENOENT, ktime=5, dirfd=-100, name="/nope"))
    assert table.get(100, 3).type == "directory" and table.get(100, 4).name == "/etc/shadow"
    assert table.get(100, 6).name == "memfd:payload" and sorted(table.processes[100]) == [3, 4, 5, 6]
    notes = apply(table, syscall("close", 0, ktime=6, fd=5), syscall("close", -errno.EBADF, ktime=7, fd=42))
    assert notes == {(100, 6): {"num": 5, "type": "file", "name": "/tmp/x"}}
    apply(table, syscall("execve", 0, ktime=8, filename="/bin/sh", argv=b"sh\0"))
    assert sorted(table.processes[100]) == [3, 6]  # 4 was O_CLOEXEC


def test_forks_inherit_exits_drop_and_dups_copy():
    table = FdTable(TABLE)
    apply(table, syscall("open", 3, ktime=1, name="/var/log/app.log", flags=os.O_WRONLY),
          raw("fork", ktime=2, child_pid=200),
          syscall("fcntl", 10, pid=200, ktime=3, fd=3, cmd=1030, arg=10),  # F_DUPFD_CLOEXEC
          raw("exit", ktime=4, exit_code=0))
    assert 100 not in table.processes
    assert table.get(200, 3).name == table.get(200, 10).name == "/var/log/app.log"
    assert table.get(200, 10).cloexec and not table.get(200, 3).cloexec


def test_accepted_connections_carry_the_peer():
    table = FdTable(TABLE)
    notes = apply(table,
                  syscall("socket", 3, ktime=1, domain=socket.AF_INET, socktype=socket.SOCK_STREAM | os.O_CLOEXEC),
                  syscall("bind", 0, ktime=2, fd=3, addr=inet("0.0.0.0", 8080), addrlen=16),
                  syscall("listen", 0, ktime=3, fd=3, backlog=5),
                  syscall("accept4", 4, ktime=4, fd=3, addr=inet("192.168.1.5", 51000), flags=0))
    assert notes[100, 4] == {"num": 4, "type": "ipv4", "name": "0.0.0.0:8080->192.168.1.5:51000", "l4proto": "tcp",
                             "local": {"family": "inet", "addr": "0.0.0.0", "port": 8080},
                             "remote": {"family": "inet", "addr": "192.168.1.5", "port": 51000}, "role": "server"}
    assert table.get(100, 3).cloexec and not table.get(100, 4).cloexec


def test_tables_are_bounded():
    table = FdTable(TABLE, max_processes=10, max_fds=5)
    apply(table, *[syscall("open", fd, ktime=fd, name=f"/f{fd}") for fd in range(3, 13)])
    assert sorted(table.processes[100]) == [3, 4, 5, 6, 7] and table.overflow == 5
    apply(table, *[syscall("open", 3, pid=pid, ktime=pid, name="/f") for pid in range(1000, 1020)])
    assert len(table.processes) == 10 and min(table.processes) == 1010


def test_records_carry_the_fd():
    d = decoder()
    table = FdTable(TABLE)
    arrays, _ = d.split(batch_of(
        syscall("socket", 3, ktime=1, domain=socket.AF_INET6, socktype=socket.SOCK_DGRAM),
        syscall("connect", 0, ktime=2, fd=3, addr=(10).to_bytes(2, "little") + (53).to_bytes(2, "big") + bytes(4)
                + bytes(15) + b"\1" + bytes(4), addrlen=28)))
    records = d.records(arrays, frozenset({"connect"}), table.apply(arrays))
    assert records[0]["evt"]["fd"] == {"num": 3, "type": "ipv6", "name": "->[::1]:53", "l4proto": "udp",
                                       "remote": {"family": "inet6", "addr": "::1", "port": 53}, "role": "client"}


def test_pipes_and_socketpairs_make_two_fds():
    table = FdTable(TABLE)
    pair = (3).to_bytes(4, "little") + (4).to_bytes(4, "little")
    apply(table, syscall("pipe2", 0, ktime=1, fds=pair, flags=os.O_CLOEXEC),
          syscall("socketpair", 0, ktime=2, domain=socket.AF_UNIX, socktype=socket.SOCK_STREAM,
                  fds=(5).to_bytes(4, "little") + (6).to_bytes(4, "little")),
          syscall("pipe", -24, ktime=3, fds=b""))  # EMFILE: nothing written
    assert [table.get(100, n).type for n in (3, 4, 5, 6)] == ["pipe", "pipe", "unix", "unix"]
    assert table.get(100, 3).cloexec and not table.get(100, 5).cloexec and sorted(table.processes[100]) == [3, 4, 5, 6]
    notes = apply(table, syscall("dup2", 1, ktime=4, oldfd=4, newfd=1))
    assert notes[100, 4] == {"num": 1, "type": "pipe", "name": ""}

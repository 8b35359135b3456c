"""Per-process fd tables from fd syscalls, in the order they happened."""

import errno
import os
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    assert table.get(100, 6).name == "memfd:payload" and sorted(table.fds(100)) == [3, 4, 5, 6]
    notes = apply(table, syscall("close", 0, ktime=6, fd=5), syscall("close", -errno.EBADF, ktime=7, fd=42))
    assert notes == {(100, 6): {"num": 5, "type": "file", "name": "/tmp/x"}}
    apply(table, syscall("execve", 0, ktime=8, filename="/bin/sh", argv=b"sh\0"))
    assert sorted(table.fds(100)) == [3, 6]  # 4 was O_CLOEXEC


def test_forks_inherit_exits_drop_and_dups_copy():
    table = FdTable(TABLE)
    apply(table, syscall("open", 3, ktime=1, name="/var/log/app.log", flags=os.O_WRONLY),
          raw("fork", ktime=2, child_pid=200),
          syscall("fcntl", 10, pid=200, ktime=3, fd=3, cmd=1030, arg=10),  # F_DUPFD_CLOEXEC
          raw("exit", ktime=4, exit_code=0))
    assert 100 not in table.pids()
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
    assert sorted(table.fds(100)) == [3, 4, 5, 6, 7] and table.overflow == 5
    apply(table, *[syscall("open", 3, pid=pid, ktime=pid, name="/f") for pid in range(1000, 1020)])
    assert len(table) == 10 and min(table.pids()) == 1010


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
    assert table.get(100, 3).cloexec and not table.get(100, 5).cloexec and sorted(table.fds(100)) == [3, 4, 5, 6]
    notes = apply(table, syscall("dup2", 1, ktime=4, oldfd=4, newfd=1))
    assert notes[100, 4] == {"num": 1, "type": "pipe", "name": ""}


# Numba warns when Python reads a uint64-keyed typed dict's items (the sensor never does).
@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaTypeSafetyWarning")
def test_a_path_that_hashes_like_another_is_never_taken_for_it():
    """The compiled walk finds an open's entry by a hash of its path: no two paths that
    hash alike can be found by hand, so the cache is made to hold one."""
    table, other = FdTable(TABLE), FdTable(TABLE)
    apply(table, syscall("openat", 3, ktime=1, dirfd=-100, name="/tmp/benign", flags=0))
    apply(other, syscall("openat", 3, ktime=1, dirfd=-100, name="/etc/shadow", flags=0))
    (benign_key,), (shadow_hash,) = table._paths.values(), other._paths.keys()
    table._paths[np.uint64(shadow_hash)] = benign_key
    notes = apply(table, syscall("openat", 4, ktime=2, dirfd=-100, name="/etc/shadow", flags=0),
                  syscall("close", 0, ktime=3, fd=4))
    assert notes[100, 3]["name"] == "/etc/shadow" and table.get(100, 3).name == "/tmp/benign"


def test_many_distinct_paths_are_named_and_what_no_fd_names_is_let_go():
    table = FdTable(TABLE)
    kept = [syscall("openat", 3, ktime=1, dirfd=-100, name="/var/log/kept.log", flags=os.O_CLOEXEC)]
    apply(table, *kept)
    for start in range(0, 60_000, 4_000):  # past every room the cache starts with, and past a collection
        notes = apply(table, *[r for k in range(start, start + 2_000)
                               for r in (syscall("openat", 4, ktime=10 + 2 * k, dirfd=-100, name=f"/tmp/f{k}", flags=0),
                                         syscall("close", 0, ktime=11 + 2 * k, fd=4))])
        assert [n["name"] for n in notes.values()] == [f"/tmp/f{k}" for k in range(start, start + 2_000)]
    sizes = table.sizes()
    assert sizes["entries"] < 40_000 and sizes["paths"] < 40_000
    assert table.get(100, 3) == table.get(100, 3)._replace(name="/var/log/kept.log", cloexec=True)


# A model of what the tables should say, for the compiled walk to agree with: pid -> fd
# -> (name as records carry it, close-on-exec, whether it is a socket).
_PATHS = [f"/srv/data/{name}" for name in ("a", "b", "c", "passwd", "shadow")]
_PEERS = [("10.0.0.9", 4444), ("10.0.0.9", 443), ("192.168.1.5", 51000)]
_pid, _made, _any = st.integers(1, 3), st.integers(3, 6), st.integers(0, 6)  # few fds: events meet
_event = st.one_of(
    st.tuples(st.just("socket"), _pid, _made, st.booleans()),
    st.tuples(st.just("connect"), _pid, _any, st.sampled_from(_PEERS)),
    st.tuples(st.just("accept"), _pid, _any, _made, st.sampled_from(_PEERS)),
    st.tuples(st.just("open"), _pid, _made, st.sampled_from(_PATHS), st.booleans()),
    st.tuples(st.just("close"), _pid, _any),
    st.tuples(st.just("dup2"), _pid, _made, _any),
    st.tuples(st.just("fork"), _pid, _pid),
    st.tuples(st.just("exit"), _pid),
    st.tuples(st.just("exec"), _pid))


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=60), st.integers(1, 60))
def test_the_compiled_tables_agree_with_a_model(events, batch_size):
    table, model, expected, records = FdTable(TABLE), {}, {}, []
    for ktime, (op, pid, *rest) in enumerate(events, start=1):
        fds = model.get(pid, {})
        if op == "open":
            num, path, cloexec = rest
            model.setdefault(pid, {})[num] = (path, cloexec, False)
            records.append(syscall("open", num, pid=pid, ktime=ktime, name=path,
                                   flags=os.O_RDONLY | (os.O_CLOEXEC if cloexec else 0)))
        elif op == "socket":
            num, cloexec = rest
            model.setdefault(pid, {})[num] = ("", cloexec, True)
            records.append(syscall("socket", num, pid=pid, ktime=ktime, domain=socket.AF_INET,
                                   socktype=socket.SOCK_STREAM | (socket.SOCK_CLOEXEC if cloexec else 0)))
        elif op == "connect":  # only a socket connects; a file's fd fails, and is noted as it is
            num, (host, port) = rest
            ok = num in fds and fds[num][2]
            if ok:
                fds[num] = (f"->{host}:{port}", fds[num][1], True)
            if num in fds:
                expected[pid, ktime] = (num, fds[num])
            records.append(syscall("connect", 0 if ok else -errno.ENOTSOCK, pid=pid, ktime=ktime, fd=num,
                                   addr=inet(host, port), addrlen=16))
        elif op == "accept":
            num, new, (host, port) = rest
            ok = num in fds and fds[num][2] and new != num
            if ok:
                fds[new] = (f"->{host}:{port}", False, True)
                model[pid] = fds
                expected[pid, ktime] = (new, fds[new])
            elif num in fds:
                expected[pid, ktime] = (num, fds[num])
            records.append(syscall("accept4", new if ok else -errno.ENOTSOCK, pid=pid, ktime=ktime, fd=num,
                                   addr=inet(host, port), flags=0))
        elif op == "close":
            (num,) = rest
            if num in fds:
                expected[pid, ktime] = (num, fds.pop(num))
            records.append(syscall("close", 0 if expected.get((pid, ktime)) else -errno.EBADF, pid=pid, ktime=ktime,
                                   fd=num))
        elif op == "dup2":
            old, new = rest
            if old in fds:
                fds[new] = (fds[old][0], False, fds[old][2])
                model[pid] = fds
                expected[pid, ktime] = (new, fds[new])
            records.append(syscall("dup2", new if old in fds else -errno.EBADF, pid=pid, ktime=ktime, oldfd=old,
                                   newfd=new))
        elif op == "fork":
            (child,) = rest
            if child != pid:
                model[child] = {**model.get(child, {}), **fds} if fds else model.get(child, {})
                records.append(raw("fork", pid=pid, ktime=ktime, child_pid=child))
        elif op == "exit":
            model.pop(pid, None)
            records.append(raw("exit", pid=pid, ktime=ktime, exit_code=0))
        else:
            model[pid] = {num: fd for num, fd in fds.items() if not fd[1]}
            records.append(syscall("execve", 0, pid=pid, ktime=ktime, filename="/bin/sh", argv=b"sh\0"))
    notes = {}
    for start in range(0, len(records), batch_size):
        arrays, _ = decoder().split(batch_of(*records[start:start + batch_size]))
        notes.update({key: (n.num, n.as_record()["name"], n.fd.cloexec) for key, n in table.apply(arrays).items()})
    assert notes == {key: (num, name, cloexec) for key, (num, (name, cloexec, _)) in expected.items()}
    for pid in (1, 2, 3):
        assert {num: (fd.as_record(num)["name"], fd.cloexec) for num, fd in table.fds(pid).items()} == \
            {num: (name, cloexec) for num, (name, cloexec, _) in model.get(pid, {}).items()}

"""The syscall table: numbers from the uapi header, capture specs, and argument decoding."""

import socket

import numpy as np
import pytest

from sensor.kernel import layout, syscalls
from sensor.kernel.syscalls import SyscallTable

C = layout.events().constants


@pytest.fixture(scope="module")
def table():
    return SyscallTable.from_headers(None)  # the system's uapi copy: no kernel tree needed


def test_numbers_come_from_the_uapi_header(table):
    assert syscalls.parse_unistd("#define __NR_read 0\n#define __NR_openat 257\n") == {"read": 0, "openat": 257}
    assert table.numbers["openat"] == 257 and table.numbers["execve"] == 59 and table.numbers["open"] == 2
    assert table.name(257) == "openat" and table.name(100000) == "syscall_100000"


def test_every_syscall_of_the_capture_list_is_known(table):
    assert set(syscalls.TABLE) <= set(table.numbers)


def test_argument_names_cannot_shadow_evt_fields():
    with pytest.raises(ValueError, match="evt fields"):
        syscalls._define("bogus", "type:int")


def spec(table, name, wanted=None):
    wanted = wanted or {name}
    return table.specs(wanted, results=wanted)[table.numbers[name]]


def test_specs_say_what_to_read_where(table):
    openat = spec(table, "openat")
    assert openat["flags"] == C["MAYFLY_SPEC_EMIT"] | C["MAYFLY_SPEC_TRACK_RESULT"]
    assert (openat["slot"][0]["read"], openat["slot"][0]["arg"]) == (C["MAYFLY_READ_STR"], 1)
    assert openat["slot"][1]["read"] == C["MAYFLY_READ_NONE"]
    connect = spec(table, "connect")["slot"][0]
    assert (connect["read"], connect["arg"], connect["len_arg"]) == (C["MAYFLY_READ_BYTES"], 1, 2)
    accept = spec(table, "accept4")["slot"][0]
    assert (accept["read"], accept["arg"], accept["len_arg"]) == (C["MAYFLY_READ_BYTES_OUT"], 1, 2)
    execve = spec(table, "execve")["slot"]
    assert [(s["read"], s["arg"]) for s in execve] == [(C["MAYFLY_READ_STR"], 0), (C["MAYFLY_READ_ARGV"], 1),
                                                       (0, 0)]
    mount = spec(table, "mount")["slot"]
    assert [s["arg"] for s in mount] == [0, 1, 2] and all(s["read"] == C["MAYFLY_READ_STR"] for s in mount)
    assert spec(table, "openat2")["slot"][1]["len"] == 24
    close = spec(table, "close")
    assert close["flags"] == C["MAYFLY_SPEC_EMIT"] | C["MAYFLY_SPEC_TRACKED_FD0"] | C["MAYFLY_SPEC_UNTRACK_FD0"]


def test_only_wanted_syscalls_are_captured_but_exit_codes_always(table):
    specs = table.specs({"openat"}, results={"openat"})
    captured = {table.name(nr) for nr in np.flatnonzero(specs["flags"] & C["MAYFLY_SPEC_EMIT"])}
    assert captured == {"openat"}
    exit_code = {table.name(nr) for nr in np.flatnonzero(specs["flags"] & C["MAYFLY_SPEC_EXIT_CODE"])}
    assert exit_code == {"exit", "exit_group"}


def test_syscalls_without_an_attached_exit_are_sent_at_enter_but_execs_wait_for_sched_process_exec(table):
    specs = table.specs({"openat", "init_module", "execve"}, results={"openat"})
    at_enter = {table.name(nr) for nr in np.flatnonzero(specs["flags"] & C["MAYFLY_SPEC_AT_ENTER"])}
    assert at_enter == {"init_module"}


def test_an_event_sent_at_enter_has_no_result(table):
    e = event(table, "init_module", 0)
    e["flags"] = C["MAYFLY_SYSCALL_NO_RESULT"]
    assert "res" not in table.decode_args(e)
    assert table.decode_args(event(table, "init_module", -38))["res"] == -38


def test_exit_tracepoints_carry_the_kernels_names():
    assert syscalls.exit_tracepoint("openat") == "syscalls/sys_exit_openat"
    assert syscalls.exit_tracepoint("umount2") == "syscalls/sys_exit_umount"


def event(table, name, result, args=(), slots=(), truncated=0):
    """A syscall event as the kernel lays it out."""
    e = np.zeros(1, layout.events().structs["mayfly_syscall_event"])[0]
    e["nr"], e["result"], e["truncated"] = table.numbers[name], result, truncated
    e["args"][:len(args)] = [a & (2**64 - 1) for a in args]
    for slot, data in slots:
        start = slot * C["MAYFLY_STR_LEN"]
        e["data"][start:start + len(data)] = np.frombuffer(data, np.uint8)
        e["slot_len"][slot] = len(data)
    return e


def test_decode_a_failed_open(table):
    e = event(table, "openat", -2, args=(-100, 0x7FFF0000, 0o100 | 1, 0o640), slots=[(0, b"/etc/shadow\0stale")])
    assert table.decode_args(e) == {"type": "openat", "res": -2, "dirfd": -100, "name": "/etc/shadow",
                                    "flags": 0o101, "mode": 0o640}


def test_decode_sockaddrs(table):
    inet = socket.AF_INET.to_bytes(2, "little") + (8080).to_bytes(2, "big") + bytes([10, 0, 0, 7]) + bytes(8)
    e = event(table, "connect", 0, args=(3, 1, 16), slots=[(0, inet)])
    assert table.decode_args(e)["addr"] == {"family": "inet", "addr": "10.0.0.7", "port": 8080}
    inet6 = (10).to_bytes(2, "little") + (443).to_bytes(2, "big") + bytes(4) + socket.inet_pton(
        socket.AF_INET6, "fd00::1") + bytes(4)
    assert syscalls.sockaddr(inet6) == {"family": "inet6", "addr": "fd00::1", "port": 443}
    assert syscalls.sockaddr((1).to_bytes(2, "little") + b"/run/docker.sock\0junk") == \
        {"family": "unix", "path": "/run/docker.sock"}
    assert syscalls.sockaddr((1).to_bytes(2, "little") + b"\0hidden\0") == {"family": "unix", "path": "@hidden"}
    assert syscalls.sockaddr((17).to_bytes(2, "little")) == {"family": 17}


def test_decode_argv_cut_and_flagged(table):
    e = event(table, "execve", 0, args=(1, 2, 3), slots=[(0, b"/bin/sh\0"), (1, b"sh\0-c\0echo \xff\0cut-her")],
              truncated=2)
    assert table.decode_args(e) == {"type": "execve", "res": 0, "filename": "/bin/sh",
                                    "argv": ["sh", "-c", b"echo \xff", "cut-her"], "truncated": True}


def test_decode_structs(table):
    how = np.array([0o100000, 0o600, 4], "<u8").tobytes()
    assert table.decode_args(event(table, "openat2", 3, args=(-100, 1, 2, 24), slots=[(0, b"/x\0"), (1, how)])
                             )["how"] == {"flags": 0o100000, "mode": 0o600, "resolve": 4}
    caps = np.array([1 << 5, 1 << 5, 0, 1, 1, 0], "<u4").tobytes()
    assert table.decode_args(event(table, "capset", 0, slots=[(0, caps)]))["data"] == \
        {"effective": (1 << 32) | (1 << 5), "permitted": (1 << 32) | (1 << 5), "inheritable": 0}


def test_unknown_syscall_numbers_decode_to_their_number(table):
    e = np.zeros(1, layout.events().structs["mayfly_syscall_event"])[0]
    e["nr"], e["result"] = 499, -38
    assert table.decode_args(e) == {"type": "syscall_499", "res": -38}


def test_decode_many_cuts_a_slot_at_its_own_record_end(table):
    """A slot's length can run past what the kernel sent (an argv that spills into the
    next slot, which a record without a third slot leaves out): decoding many records
    at once must stop at each one's end, not read on into the next record."""
    from sensor.testing.events import decoder, batch_of, syscall

    # argv fills its slot to the record's end: no padding stops a string read past it
    first = bytearray(syscall("execve", 0, pid=1, filename="/bin/a", argv=b"a\0" + b"x" * (C["MAYFLY_STR_LEN"] - 2)))
    lengths = layout.events().structs["mayfly_syscall_event"].fields["slot_len"]
    at, size = lengths[1] + lengths[0].base.itemsize, lengths[0].base.itemsize  # slot_len[1]
    first[at:at + size] = (C["MAYFLY_STR_LEN"] * 2).to_bytes(size, "little")  # argv claims two slots
    second = syscall("execve", 0, pid=2, ktime=6_000_000_000, filename="/bin/b",
                     argv=b"b\0" + b"y" * (C["MAYFLY_STR_LEN"] - 2))
    arrays, _ = decoder().split(batch_of(bytes(first), second))
    (events,) = arrays["syscall"]
    decoded = table.decode_many(events)
    assert decoded[0]["argv"] == ["a", "x" * (C["MAYFLY_STR_LEN"] - 2)]
    assert decoded[1]["argv"] == ["b", "y" * (C["MAYFLY_STR_LEN"] - 2)]
    assert decoded == [table.decode_args(e) for e in events]

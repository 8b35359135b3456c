"""The engine reading a batch's syscall rows (sensor.detect.rows) against the reference
evaluator reading the records the decoder makes of the same rows: random streams of
raw kernel records (hypothesis), the built-in rules, Falco's stable rules and random
conditions must give identical matches, batch after batch."""

import errno
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor import resources
from sensor.detect import rule_loader
from sensor.detect.condition import And, Check, Or, parse
from sensor.detect.engine import Engine
from sensor.detect.evaluate import Reference
from sensor.identity.fds import Fd, FdNotes, FdTable
from sensor.detect.rows import Notes
from sensor.testing.events import TABLE, batch_of, decoder, inet, raw, syscall
from test_engine import MATCHES, conditions, requires_a_match

FALCO = Path(__file__).resolve().parents[3] / "shared" / "compat" / "falco" / "falco_rules.yaml"
PATHS = ["/etc/shadow", "/etc/passwd", "/tmp/x", "/usr/bin/sh", "/dev/shm/p", "relative", "/etc/kubernetes/admin.conf"]
COMMS = [b"sh", b"bash", b"cat", b"nc", b"runc", b"curl"]
CGROUPS = {4242: "/mayfly-abc", 5151: "/system.slice/cron.service", 6161: "/mayfly-def"}


@st.composite
def events(draw, ktime):
    """One syscall record, from one of a few threads of a few processes."""
    pid = draw(st.sampled_from([100, 101, 102, 200]))
    header = {"cgroup_id": {100: 4242, 101: 4242, 102: 5151, 200: 6161}[pid], "ppid": 1,
              "tid": pid + draw(st.sampled_from([0, 0, 1])), "uid": draw(st.sampled_from([0, 1000])),
              "comm": draw(st.sampled_from(COMMS))}
    kind = draw(st.sampled_from(["openat", "open", "close", "socket", "connect", "dup2", "execve", "unlinkat",
                                 "ptrace", "setuid", "symlinkat", "fork"]))
    fd = draw(st.integers(0, 6))
    res = draw(st.sampled_from([0, 3, 4, 5, -errno.ENOENT, -errno.EINPROGRESS]))
    common = {"pid": pid, "ktime": ktime, "header": header}
    if kind == "fork":  # a new entry in the process table: its children's lineage changes
        return raw("fork", pid=pid, ktime=ktime, child_pid=draw(st.sampled_from([101, 102])), clone_flags=17,
                   **{k: v for k, v in header.items() if k != "tid"})
    if kind in ("openat", "open"):
        flags = draw(st.sampled_from([os.O_RDONLY, os.O_WRONLY | os.O_CREAT, os.O_RDWR, os.O_DIRECTORY]))
        extra = {"dirfd": -100} if kind == "openat" else {}
        return syscall(kind, res, name=draw(st.sampled_from(PATHS)), flags=flags, mode=0o644, **extra, **common)
    if kind == "socket":
        return syscall(kind, res, domain=draw(st.sampled_from([socket.AF_INET, socket.AF_UNIX])),
                       socktype=socket.SOCK_STREAM, **common)
    if kind == "connect":
        return syscall(kind, res, fd=fd, addr=inet(draw(st.sampled_from(["10.0.0.9", "127.0.0.1"])),
                                                   draw(st.sampled_from([80, 4444]))), addrlen=16, **common)
    if kind == "dup2":
        return syscall(kind, res, oldfd=fd, newfd=draw(st.integers(0, 2)), **common)
    if kind == "execve":
        name = draw(st.sampled_from(["/bin/sh", "/usr/bin/nc", "/dev/shm/p"]))
        return syscall(kind, draw(st.sampled_from([0, -errno.ENOENT])), filename=name,
                       argv=name.rsplit("/", 1)[1].encode() + b"\0-e\0", **common)
    if kind == "unlinkat":
        return syscall(kind, res, dirfd=-100, name=draw(st.sampled_from(PATHS)), flag=0, **common)
    if kind == "ptrace":
        return syscall(kind, res, request=draw(st.sampled_from([0, 16])), **common)
    if kind == "setuid":
        return syscall(kind, res, uid=draw(st.sampled_from([0, 1000])), **common)
    if kind == "symlinkat":
        return syscall(kind, res, oldname=draw(st.sampled_from(PATHS)), newdirfd=-100, newname="/tmp/l", **common)
    return syscall("close", res, fd=fd, **common)


@st.composite
def streams(draw):
    count = draw(st.integers(1, 3))
    return [[draw(events(ktime=1000 * b + i + 1)) for i in range(draw(st.integers(1, 30)))] for b in range(count)]


def matches_both_ways(rules: dict, batches: list[list[bytes]]) -> tuple[list, list]:
    """(record, rule) matches of the engine (on rows; forks on records) and of the
    reference on records."""
    d, fds = decoder(CGROUPS), FdTable(TABLE)
    engine, reference = Engine(rules), Reference(rules)
    got, expected = [], []
    for raws in batches:
        arrays, _ = d.split(batch_of(*raws))
        d.processes.apply(arrays)
        notes = fds.apply(arrays)
        records = d.records(arrays, None, notes)
        expected += [(_identity(records[i]), name) for i, name in reference.match(records)]
        batch = d.rows(arrays.get("syscall", []), notes)
        names = engine.program.names
        got += [(_identity(batch[a].record(i)), names[r]) for a, i, r in engine.match_rows(batch).tolist()]
        others = d.records({kind: groups for kind, groups in arrays.items() if kind != "syscall"}, None, notes)
        got += [(_identity(others[i]), name) for i, name in engine.match(others)]  # as the sensor does
    MATCHES.append(len(expected))
    return sorted(got), sorted(expected)


def _identity(record: dict) -> tuple:
    return record["ts"], record["proc"]["tid"], record["evt"]["type"]


def ruleset(paths) -> dict:
    return rule_loader.load(paths).conditions


@requires_a_match
@settings(max_examples=60, deadline=None)
@given(batches=streams())
def test_built_in_rules_match_the_same_on_rows_and_records(batches):
    got, expected = matches_both_ways(ruleset(resources.builtin_rule_files()), batches)
    assert got == expected


def test_falco_rules_match_the_same_on_rows_and_records():
    if not FALCO.exists():  # as the falco_corpus fixture, which @given tests cannot take
        if os.environ.get("CI"):
            pytest.fail(f"Falco's rule corpus is missing at {FALCO}")
        pytest.skip(f"Falco's rule files are not next to the project ({FALCO})")
    conditions = ruleset([FALCO])

    @settings(max_examples=40, deadline=None)
    @given(batches=streams())
    def check(batches):
        got, expected = matches_both_ways(conditions, batches)
        assert got == expected

    requires_a_match(check)()


@requires_a_match
@settings(max_examples=150, deadline=None)
@given(rules=st.lists(conditions, min_size=1, max_size=4), batches=streams())
def test_random_conditions_match_the_same_on_rows_and_records(rules, batches):
    got, expected = matches_both_ways({f"r{i}": rule for i, rule in enumerate(rules)}, batches)
    assert got == expected


@requires_a_match
@settings(max_examples=100, deadline=None)
@given(rules=st.lists(conditions, min_size=1, max_size=3), batches=streams(),
       op=st.sampled_from(["<", "<=", ">", ">=", "=", "!="]), threshold=st.sampled_from([0, 5, 300, 5000000000]),
       join=st.sampled_from([And, Or]))
def test_fields_read_only_when_a_check_needs_them_match_the_same(rules, batches, op, threshold, join):
    """proc.duration (it changes with time) is read for a row only when a check on it is
    reached; the row then runs again."""
    duration = Check("proc.duration", op, str(threshold))
    got, expected = matches_both_ways({f"r{i}": join((rule, duration)) for i, rule in enumerate(rules)}, batches)
    assert got == expected


def test_rows_that_differ_only_in_a_pointer_share_their_evt_key():
    d = decoder()
    first = syscall("openat", 3, ktime=1, dirfd=-100, name="/etc/shadow", flags=0)

    def keys(change):
        arrays, _ = d.split(batch_of(first, first))
        change(arrays["syscall"][0][1])
        (rows,) = d.rows(arrays["syscall"], FdNotes())
        return rows.keys["evt"]

    def pointer(event):
        event["args"][1] = 0x7FFD_0000_1234  # the path's address: not in the record

    def flags(event):
        event["args"][2] = os.O_WRONLY  # in the record

    assert keys(pointer)[0] == keys(pointer)[1]
    assert keys(flags)[0] != keys(flags)[1]


def test_a_proc_key_changes_with_the_process_table():
    """The same thread's bytes, before and after its parent exec'ed: proc.pname differs."""
    d = decoder()
    arrays, _ = d.split(batch_of(raw("fork", pid=100, ktime=1, child_pid=101, clone_flags=17)))
    d.processes.apply(arrays)
    event = syscall("close", 0, pid=101, ktime=2, header={"ppid": 100}, fd=3)
    arrays, _ = d.split(batch_of(event))
    before = d.rows(arrays["syscall"], FdNotes())[0].keys["proc"][0]
    arrays, _ = d.split(batch_of(syscall("execve", 0, pid=100, ktime=3, filename="/bin/nc", argv=b"nc\0")))
    d.processes.apply(arrays)
    arrays, _ = d.split(batch_of(event))
    assert d.rows(arrays["syscall"], FdNotes())[0].keys["proc"][0] != before


def test_a_row_record_is_made_only_when_a_rule_needs_a_new_value():
    d = decoder()
    made = []

    def record(event, notes):
        made.append(int(event["hdr"]["ktime_ns"]))
        return d.events.syscall_record(event, notes)

    raws = [syscall("openat", 3, ktime=k, dirfd=-100, name="/etc/shadow", flags=0) for k in range(1, 101)]
    arrays, _ = d.split(batch_of(*raws))
    engine = Engine({"shadow": parse("evt.type = openat and fd.name = /etc/shadow and proc.name = sh")})
    (rows,) = d.rows(arrays["syscall"], FdNotes())
    rows._make_record = record
    assert len(engine.match_rows([rows])) == 100
    assert len(made) == 1  # one row read for its evt, proc and container parts alike


def test_rows_of_chosen_syscalls_only_and_their_records():
    d = decoder()
    raws = [syscall("openat", 3, ktime=1, dirfd=-100, name="/etc/shadow", flags=0),
            syscall("close", 0, ktime=2, fd=3),
            syscall("openat", 4, ktime=3, dirfd=-100, name="/etc/passwd", flags=0)]
    arrays, _ = d.split(batch_of(*raws))
    (rows,) = d.rows(arrays["syscall"], FdNotes(), np.array([TABLE.numbers["openat"]], np.uint32))
    assert rows.n == 2 and [rows.record(k)["evt"]["name"] for k in range(rows.n)] == ["/etc/shadow", "/etc/passwd"]
    assert d.rows(arrays["syscall"], FdNotes(), np.array([TABLE.numbers["execve"]], np.uint32)) == []


def test_fd_notes_out_of_time_order_are_refused():
    with pytest.raises(ValueError, match="time order"):
        Notes(FdNotes(tids=np.array([100, 100], np.uint64), times=np.array([5, 4], np.uint64),
                      digests=np.array([7, 7], np.uint64), nums=np.array([3, 3]), packed=np.array([0, 0]),
                      entries=[Fd("file", "/tmp/x")]))

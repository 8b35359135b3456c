"""From drained ring-buffer bytes to per-kind arrays and `event` records."""

import numpy as np

from sensor.identity.stage import cgroup_changes
from sensor.testing.events import EVENTS, TABLE, C, batch_of, decoder, raw


def test_split_groups_by_kind_and_counts_unknown_kinds():
    bogus = bytearray(raw("exit"))
    bogus[0:2] = (999).to_bytes(2, "little")
    arrays, unknown = decoder().split(batch_of(raw("fork", child_pid=7), bytes(bogus), raw("fork", child_pid=8),
                                               raw("exit", exit_code=3)))
    assert unknown == 1
    assert [a["child_pid"].tolist() for a in arrays["fork"]] == [[7, 8]]
    assert [a["exit_code"].tolist() for a in arrays["exit"]] == [[3]]


def test_syscall_records_are_cut_to_their_slots_and_zero_filled():
    full = raw("syscall", nr=TABLE.numbers["unlink"], result=0, slot_len=[4, 0, 0])
    data_at = EVENTS.structs["mayfly_syscall_event"].fields["data"][1]
    cut = full[:data_at] + b"/tmp" + b"\xaa" * 60  # the kernel sends whole slots; the tail here is noise
    arrays, _ = decoder().split(batch_of(cut[:data_at + 4]))
    (record,) = decoder().records(arrays, None)
    assert record["evt"] == {"type": "unlink", "res": 0, "name": "/tmp"}


def test_event_records_carry_container_proc_and_evt():
    d = decoder()
    arrays, _ = d.split(batch_of(raw("fork", child_pid=7, clone_flags=17)))
    (record,) = d.records(arrays, None)
    assert record["kind"] == "event" and record["ts"] == 5_000_000_000 + d.clock.offset
    assert record["container"] == {"id": "mayfly-abc", "resolved": False, "cgroup_id": 4242}
    assert record["proc"] == {"pid": 100, "tid": 100, "ppid": 1, "uid": 0, "gid": 0, "comm": "sh"}
    assert record["evt"] == {"type": "fork", "child_pid": 7, "clone_flags": 17}


def test_only_the_asked_types_become_records():
    d = decoder()
    arrays, _ = d.split(batch_of(raw("syscall", nr=TABLE.numbers["close"], result=0, args=[3, 0, 0, 0, 0, 0]),
                                 raw("syscall", nr=TABLE.numbers["dup"], result=4, args=[3, 0, 0, 0, 0, 0]),
                                 raw("exit", exit_code=0)))
    assert [r["evt"]["type"] for r in d.records(arrays, frozenset({"dup", "procexit"}))] == ["dup", "procexit"]
    assert d.records(arrays, frozenset()) == []


def test_exec_records_name_the_process_exe_and_cmdline():
    d = decoder()
    data = np.zeros(C["MAYFLY_DATA_LEN"], np.uint8)
    data[:8] = np.frombuffer(b"/bin/ls\0", np.uint8)
    data[256:262] = np.frombuffer(b"ls\0-l\0", np.uint8)
    arrays, _ = d.split(batch_of(raw("syscall", nr=TABLE.numbers["execve"], result=0, slot_len=[8, 6, 0], data=data)))
    (record,) = d.records(arrays, None)
    assert record["proc"]["exe"] == "/bin/ls" and record["proc"]["cmdline"] == "ls -l"


def test_every_record_names_its_process_program_once_known():
    d = decoder()
    data = np.zeros(C["MAYFLY_DATA_LEN"], np.uint8)
    data[:8] = np.frombuffer(b"/bin/ls\0", np.uint8)
    data[256:262] = np.frombuffer(b"ls\0-l\0", np.uint8)
    exec_arrays, _ = d.split(batch_of(raw("syscall", nr=TABLE.numbers["execve"], result=0, slot_len=[8, 6, 0],
                                          data=data)))
    d.processes.apply(exec_arrays)
    later, _ = d.split(batch_of(raw("exit", exit_code=0)))
    (record,) = d.records(later, None)
    assert (record["proc"]["exe"], record["proc"]["cmdline"]) == ("/bin/ls", "ls -l")
    assert d.processes.get(100)["exe"] == "/bin/ls"  # an exited process stays known as an ancestor


def test_tcp_and_cgroup_events():
    d = decoder({})
    addr = np.zeros(16, np.uint8)
    addr[:4] = [127, 0, 0, 1]
    path = b"/kubepods/pod1".ljust(C["MAYFLY_CGROUP_PATH_LEN"], b"\0")
    arrays, _ = d.split(batch_of(
        raw("tcp", oldstate=7, newstate=2, sport=0, dport=80, family=2, protocol=6, saddr=addr, daddr=addr),
        raw("cgroup", id=555, op=C["MAYFLY_CGROUP_MKDIR"], level=1, path=path)))
    for cgroup_id, path, ts in cgroup_changes(arrays, C["MAYFLY_CGROUP_MKDIR"], d.clock, removals=False):
        d.cgroups.made(cgroup_id, path, ts)
    by_type = {r["evt"]["type"]: r for r in d.records(arrays, None)}
    tcp, cgroup = by_type["tcp_state"], by_type["cgroup_mkdir"]
    assert tcp["evt"] == {"type": "tcp_state", "old": "CLOSE", "new": "SYN_SENT", "family": "inet",
                          "saddr": "127.0.0.1", "sport": 0, "daddr": "127.0.0.1", "dport": 80, "sk": 0}
    assert cgroup["evt"] == {"type": "cgroup_mkdir", "id": 555, "path": "/kubepods/pod1", "level": 1}
    assert d.cgroups.container(555) == {"id": "pod1", "resolved": False, "cgroup_id": 555}


def test_removed_cgroups_still_name_their_last_events():
    d = decoder()
    rmdir = raw("cgroup", id=4242, op=C["MAYFLY_CGROUP_RMDIR"], level=1, path=b"/mayfly-abc".ljust(256, b"\0"))
    arrays, _ = d.split(batch_of(raw("exit", exit_code=0), rmdir))
    assert list(cgroup_changes(arrays, C["MAYFLY_CGROUP_MKDIR"], d.clock, removals=False)) == []
    exit_record = d.records(arrays, frozenset({"procexit"}))[0]
    ((cgroup_id, path, ts),) = cgroup_changes(arrays, C["MAYFLY_CGROUP_MKDIR"], d.clock, removals=True)
    assert (cgroup_id, path, ts) == (4242, "/mayfly-abc", d.clock.to_epoch(5_000_000_000))
    d.cgroups.removed(cgroup_id, ts, losses={})
    assert exit_record["container"]["id"] == "mayfly-abc"
    assert d.cgroups.container(4242)["id"] == "mayfly-abc"  # late records still name it
    assert d.cgroups.container(31337) == {"id": "cgroup-31337", "cgroup_id": 31337, "resolved": False}

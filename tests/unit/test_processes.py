"""The process table: lineage from fork and exec events, seeded from /proc, bounded."""

import os
import re
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.testing.events import TABLE, batch_of, decoder, raw, syscall

from sensor.testing.containers import wait_until
from sensor.identity.processes import Details, Process, ProcessTable, _below, capability_text, read_details, read_proc


def test_lineage_from_forks_and_execs_in_time_order():
    d = decoder()
    table = d.processes
    table.put(10, Process("containerd-shim", "/usr/bin/containerd-shim", "containerd-shim -id x", 1))
    # Out of time order in the batch: the table applies them by kernel time.
    arrays, _ = d.split(batch_of(
        syscall("execve", pid=12, ktime=40, filename="/usr/bin/curl", argv=b"curl\0-s\0evil\0"),
        raw("fork", pid=10, ktime=10, child_pid=11),
        syscall("execve", pid=11, ktime=20, filename="/bin/sh", argv=b"sh\0-c\0curl -s evil\0"),
        raw("fork", pid=11, ktime=30, child_pid=12)))
    table.apply(arrays)
    assert table.get(11) == {"start_ts": d.clock.to_epoch(10), "exe": "/bin/sh", "cmdline": "sh -c curl -s evil", "pname": "containerd-shim",
                             "pexe": "/usr/bin/containerd-shim", "pcmdline": "containerd-shim -id x",
                             "anames": ["containerd-shim"]}
    curl = table.get(12)
    assert (curl["exe"], curl["cmdline"], curl["pname"], curl["pexe"]) == ("/usr/bin/curl", "curl -s evil", "sh",
                                                                          "/bin/sh")
    assert curl["anames"] == ["sh", "containerd-shim"]  # parent, grandparent; pid 1 is not known here


def test_a_child_is_its_parent_until_it_execs_and_ancestors_are_bounded():
    d = decoder()
    table = ProcessTable(TABLE, d.clock, ancestors=2)
    for pid in range(1, 6):
        table.put(pid, Process(f"p{pid}", f"/bin/p{pid}", f"p{pid}", pid - 1))
    assert table.get(5)["anames"] == ["p4", "p3"]
    d.processes = table
    arrays, _ = d.split(batch_of(raw("fork", pid=5, child_pid=6)))
    table.apply(arrays)
    assert table.entry(6) == Process("p5", "/bin/p5", "p5", 5, start_ns=d.clock.to_epoch(5_000_000_000))


def test_loops_in_parent_links_end():
    table = ProcessTable(TABLE, decoder().clock)
    table.put(7, Process("a", "/a", "a", 8))
    table.put(8, Process("b", "/b", "b", 7))
    assert table.get(7)["anames"] == ["b"]


def test_a_version_changes_with_the_entries_get_reads_and_only_those():
    table = ProcessTable(TABLE, decoder().clock, ancestors=1)
    for pid in range(1, 5):
        table.put(pid, Process(f"p{pid}", f"/bin/p{pid}", f"p{pid}", pid - 1))
    before = table.version(4)
    table.put(2, Process("p2", "/bin/p2", "p2", 1))  # a grandparent: get(4) does not read it
    assert table.version(4) == before
    table.put(3, Process("x", "/bin/x", "x", 2))  # the parent
    assert table.version(4) != before
    table.put(7, Process("a", "/a", "a", 8))
    table.put(8, Process("b", "/b", "b", 7))
    looped = table.version(7)  # a loop of parent links ends here too
    table.put(8, Process("c", "/c", "c", 7))
    assert table.version(7) != looped


def test_the_table_is_bounded():
    d = decoder()
    d.processes = table = ProcessTable(TABLE, d.clock, capacity=100)
    for pid in range(1000, 1500):
        arrays, _ = d.split(batch_of(raw("fork", pid=1, child_pid=pid)))
        table.apply(arrays)
    assert len(table) == 100 and min(table.pids()) == 1400


def test_seed_from_proc():
    me = read_proc(os.getpid())
    assert me.exe == os.path.realpath(sys.executable) and me.ppid == os.getppid()
    assert me.cmdline.startswith(sys.executable) or me.cmdline.split()[0].endswith("python")
    assert read_proc(2 ** 22 + 1) is None


def test_details_of_a_live_process_from_proc(tmp_path):
    child = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    try:
        wait_until(lambda: os.readlink(f"/proc/{child.pid}/exe").endswith("sleep"))
        details = read_details(child.pid)
    finally:
        child.kill()
        child.wait()
    assert details.cwd == str(tmp_path) and details.exe_from_memfd is False
    with open(f"/proc/{os.getpid()}/status") as f:
        mine = int(re.search(r"^CapEff:\s*(\w+)", f.read(), re.M)[1], 16)
    assert details.cap_effective == mine  # a child keeps its parent's capabilities
    assert details.tty is not None
    assert read_details(2 ** 22 + 1) == Details()


def test_capabilities_render_as_falco_does():
    assert capability_text(1 << 21 | 1 << 1) == "CAP_DAC_OVERRIDE CAP_SYS_ADMIN"
    assert capability_text(0) == ""


def test_paths_are_named_from_the_processes_own_root():
    assert _below("/c/merged", "/c/merged/bin/sh") == "/bin/sh" and _below("/c/merged", "/c/merged") == "/"
    assert _below("/", "/bin/sh") == "/bin/sh" and _below(None, "/bin/sh") == "/bin/sh"
    assert _below("/c/merged", "/memfd:x (deleted)") == "/memfd:x (deleted)"
    assert _below("/c/m", "/c/mx/y") == "/c/mx/y"  # not below it: as /proc said


def test_exited_processes_go_once_nothing_names_them_as_parent():
    d = decoder()
    table = d.processes

    def batch(*raws):
        arrays, _ = d.split(batch_of(*raws))
        table.apply(arrays)
        return arrays

    batch(raw("fork", pid=1, ktime=1, child_pid=100), raw("fork", pid=100, ktime=2, child_pid=101),
          raw("fork", pid=1, ktime=3, child_pid=102))
    arrays = batch(raw("exit", pid=100, ktime=4, exit_code=0), raw("exit", pid=102, ktime=5, exit_code=0))
    # The batch's own records still name them: exits take effect at the next batch.
    assert {r["proc"]["pid"]: "start_ts" in r["proc"] for r in d.records(arrays, None)} == {100: True, 102: True}
    batch(raw("fork", pid=1, ktime=6, child_pid=102))  # pid 102 reused at once
    assert 100 in table and 102 in table  # 100: its child 101 names it as parent
    assert table.get(101)["pname"] == "sh"  # the parent's name, though it is gone
    batch(raw("exit", pid=101, ktime=7, exit_code=0))
    batch()
    assert 101 not in table and 100 not in table  # the last child gone, then the parent
    assert 102 in table
    batch(raw("fork", pid=1, ktime=8, child_pid=103), raw("exit", pid=103, ktime=9, exit_code=0))
    batch()
    assert 103 not in table  # born and gone within one batch


_step = st.one_of(st.tuples(st.just("fork"), st.integers(1, 6), st.integers(1, 6)),
                  st.tuples(st.just("exec"), st.integers(1, 6), st.sampled_from(["sh", "curl", "nginx"])))


@settings(max_examples=150, deadline=None)
@given(st.lists(_step, max_size=40), st.integers(1, 40))
def test_the_compiled_table_agrees_with_a_model(steps, batch_size):
    """Forks copy the parent (named after the event's comm when the parent is unknown),
    execs keep the parent and take a new image: pid -> (name, exe, ppid)."""
    d = decoder()
    model, records = {}, []
    for ktime, (op, pid, arg) in enumerate(steps, start=1):
        if op == "fork":
            if arg == pid:
                continue
            name, exe, _ = model.get(pid, ("sh", "", None))
            model[arg] = (name, exe, pid)
            records.append(raw("fork", pid=pid, ktime=ktime, child_pid=arg))
        else:
            model[pid] = (arg, f"/bin/{arg}", model[pid][2] if pid in model else 1)
            records.append(syscall("execve", 0, pid=pid, ktime=ktime, filename=f"/bin/{arg}", argv=f"{arg}\0".encode(),
                                   header={"comm": arg.encode()}))
    for start in range(0, len(records), batch_size):
        arrays, _ = d.split(batch_of(*records[start:start + batch_size]))
        d.processes.apply(arrays)
    assert {pid: (e.name, e.exe, e.ppid) for pid in d.processes.pids() if (e := d.processes.entry(pid))} == model

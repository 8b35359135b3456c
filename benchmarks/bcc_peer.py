"""The BCC peer: the tool a Python team would write instead of Mayfly, the way BCC's own
tools are written (a perf buffer, a Python callback per event, a ctypes struct per
record), capturing what Mayfly's built-in rules need and applying them as plain Python
predicates (peer_rules.py: one per rule, no rule language), with container identity by
cgroup id (the cgroup2 paths, from a cgroup_mkdir tracepoint and the cgroup2 tree).

    python benchmarks/bcc_peer.py [--types openat,close,...]
    python benchmarks/bcc_peer.py --types open,openat,openat2 --marker /etc/shadow

Runs until SIGINT or SIGTERM, then prints one JSON line: events received, events the
kernel lost, alerts raised, events by cgroup id, and the rules fired by cgroup id, so
a harness can tell what was delivered and raised of a container's. Needs root.

With --marker, the one rule is what a user would write for it: a Python predicate on
the decoded event (an open whose path is the marker).

Coverage: the syscall types given (default: those the rules need; the end-to-end
harness gives those Mayfly's full pipeline captures), each with its caller's pid, uid,
comm, parent's pid and comm, cgroup id, its six arguments, its first path argument read
at entry (as execsnoop and opensnoop read theirs) or connect's sockaddr, and its result.
What the rules need beyond that is in peer_rules.py's docstring, with what it does not
cover.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor.kernel import layout, syscalls  # noqa: E402
from sensor.kernel.syscalls import OPENS, sockaddr  # noqa: E402
from sensor.kernel.bpf_program import import_bcc  # noqa: E402

from peer_rules import Event, Rules, container_of  # noqa: E402

PATH_LEN = layout.events().constants["MAYFLY_STR_LEN"]  # bytes of a path read: as much as Mayfly reads
PROGRAM = """
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include <linux/in6.h>

struct entry {
    u64 args[6];
    char path[PATH_LEN];
};
struct event {
    u64 cgroup_id, ts;
    u32 pid, tid, uid, gid, ppid, _pad;
    s64 nr, ret;
    u64 args[6];
    char comm[16];
    char pcomm[16];
    char path[PATH_LEN];
};
struct cgroup_path {
    char path[PATH_LEN];
};

/* per syscall number: -1 not captured; else the argument index to read (6: none),
   plus READ_SOCKADDR when it is a sockaddr */
BPF_ARRAY(read_arg, s32, 512);
BPF_HASH(entries, u32, struct entry, 10240);
BPF_PERCPU_ARRAY(scratch, struct entry, 1);
BPF_TABLE("lru_hash", u64, struct cgroup_path, cgroup_paths, 16384);
BPF_PERF_OUTPUT(events);

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    int nr = args->id, zero = 0;
    s32 *read = read_arg.lookup(&nr);
    if (!read || *read < 0)
        return 0;
    struct entry *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    for (int i = 0; i < 6; i++)
        e->args[i] = args->args[i];
    e->path[0] = 0;
    int index = *read & 7;
    if (*read & READ_SOCKADDR) {  /* the largest a rule reads; a smaller one's tail is its caller's stack */
        bpf_probe_read_user(e->path, sizeof(struct sockaddr_in6), (void *)e->args[index]);
    } else if (index < 6) {
        bpf_probe_read_user_str(e->path, sizeof(e->path), (void *)e->args[index]);
    }
    u32 tid = bpf_get_current_pid_tgid();
    entries.update(&tid, e);
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct entry *e = entries.lookup(&tid);
    if (!e)
        return 0;
    struct event ev = {};
    u64 ugid = bpf_get_current_uid_gid();
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    ev.cgroup_id = bpf_get_current_cgroup_id();
    ev.ts = bpf_ktime_get_ns();
    ev.pid = id >> 32;
    ev.tid = tid;
    ev.uid = ugid;
    ev.gid = ugid >> 32;
    ev.ppid = task->real_parent->tgid;
    bpf_probe_read_kernel(ev.pcomm, sizeof(ev.pcomm), task->real_parent->comm);
    ev.nr = args->id;
    ev.ret = args->ret;
    __builtin_memcpy(ev.args, e->args, sizeof(ev.args));
    __builtin_memcpy(ev.path, e->path, sizeof(ev.path));
    bpf_get_current_comm(ev.comm, sizeof(ev.comm));
    events.perf_submit(args, &ev, sizeof(ev));
    entries.delete(&tid);
    return 0;
}

/* A cgroup2 cgroup's path as it is made, so that a container gone before its events
   are read is still known by its cgroup id. */
TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
    if (args->root != 0)
        return 0;
    struct cgroup_path p = {};
    bpf_probe_read_kernel_str(p.path, sizeof(p.path), (void *)args + (args->data_loc_path & 0xFFFF));
    u64 cgroup_id = args->id;
    cgroup_paths.update(&cgroup_id, &p);
    return 0;
}
"""
READ_SOCKADDR = 0x100


def coverage(table: syscalls.SyscallTable, types) -> dict[int, int]:
    """Syscall number -> what its entry reads, for `types`: the index of its first path
    argument (6: none), or its sockaddr argument's with READ_SOCKADDR."""
    result = {}
    for name, syscall in table.syscalls.items():
        if name in types:
            paths = [i for i, (_, kind) in enumerate(syscall.args) if kind == "path"]
            addresses = [i for i, (_, kind) in enumerate(syscall.args) if kind == "sockaddr"]
            result[syscall.nr] = paths[0] if paths else addresses[0] | READ_SOCKADDR if addresses else 6
    return result


class Containers:
    """cgroup id -> container id (None: the host), from the paths the cgroup_mkdir
    tracepoint keeps, else from the cgroup2 tree as it is now (cgroups made before the
    peer started)."""

    def __init__(self, bpf):
        self.made = bpf[b"cgroup_paths"]
        self.known: dict[int, str | None] = {}
        self.root = next(line.split()[1] for line in open("/proc/self/mounts") if line.split()[2] == "cgroup2")
        self._scan()

    def of(self, cgroup_id: int) -> str | None:
        if cgroup_id not in self.known:
            path = self.made.get(self.made.Key(cgroup_id))
            if path is not None:
                self.known[cgroup_id] = container_of(path.path.decode(errors="replace"))
            else:
                self._scan()
                self.known.setdefault(cgroup_id, None)
        return self.known[cgroup_id]

    def _scan(self) -> None:
        for directory, _, _ in os.walk(self.root):
            try:
                inode = os.stat(directory).st_ino
            except OSError:
                continue
            self.known.setdefault(inode, container_of("/" + os.path.relpath(directory, self.root).lstrip(".")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", help="comma-separated syscall types to capture (default: what the rules need)")
    parser.add_argument("--marker", help="the one rule instead: an open of this path")
    args = parser.parse_args()
    table = syscalls.table()
    rules = Rules()
    covered = coverage(table, set(args.types.split(",")) if args.types else rules.types())

    bcc = import_bcc()
    bpf = bcc.BPF(text=PROGRAM, cflags=[f"-DPATH_LEN={PATH_LEN}", f"-DREAD_SOCKADDR={READ_SOCKADDR}"])
    read_arg = bpf[b"read_arg"]
    for nr in range(512):
        read_arg[ctypes.c_int(nr)] = ctypes.c_int(covered.get(nr, -1))
    containers = Containers(bpf)

    marker = args.marker.encode() if args.marker else None
    counts = collections.Counter()
    fired: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    totals = {"events": 0, "lost": 0, "alerts": 0}

    def on_event(_cpu, data, _size):
        event = bpf[b"events"].event(data)
        totals["events"] += 1
        counts[event.cgroup_id] += 1
        syscall = table.by_nr[event.nr]
        if marker is not None:
            totals["alerts"] += syscall.name in OPENS and event.path == marker
            return
        reads = covered[event.nr]
        # The path buffer's bytes as sent: ctypes gives a char array up to its first NUL.
        raw = ctypes.string_at(ctypes.addressof(event) + type(event).path.offset, PATH_LEN)
        e = Event(syscall.name, event.ret, {name: event.args[i] for i, (name, _) in enumerate(syscall.args)},
                  raw.split(b"\0", 1)[0].decode(errors="replace") if reads < 6 else None,
                  sockaddr(raw) if reads & READ_SOCKADDR else None, event.pid, event.uid,
                  event.comm.decode(errors="replace"), event.ppid, event.pcomm.decode(errors="replace"),
                  event.cgroup_id, event.ts, containers.of(event.cgroup_id))
        for rule in rules.match(e):
            fired[event.cgroup_id][rule] += 1
            totals["alerts"] += 1

    def on_lost(lost):
        totals["lost"] += lost

    bpf[b"events"].open_perf_buffer(on_event, page_cnt=512, lost_cb=on_lost)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    print(json.dumps({"ready": True}), flush=True)
    while not stop:
        bpf.perf_buffer_poll(100)
    bpf.perf_buffer_poll(0)
    print(json.dumps({**totals, "by_cgroup": counts, "fired": fired}), flush=True)


if __name__ == "__main__":
    main()

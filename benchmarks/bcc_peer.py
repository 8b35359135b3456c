"""The BCC peer: the tool a Python team would write instead of Mayfly, the way BCC's own
tools are written (a perf buffer, a Python callback per event, a ctypes struct per
record), capturing what Mayfly's built-in rules need and applying those rules in plain
Python (Mayfly's reference evaluator: the same meaning, no compiled engine).

    python benchmarks/bcc_peer.py --types openat,close,... [--rules FILE ...]
    python benchmarks/bcc_peer.py --types open,openat,openat2 --marker /etc/shadow

Runs until SIGINT or SIGTERM, then prints one JSON line: events received, events the
kernel lost, alerts raised, and events by cgroup id, so a harness can tell what was
delivered of a container's. Needs root.

With --marker, the one rule is what a user would write for it: a Python predicate on
the decoded event (an open whose path is the marker), no rule language.

Coverage: the syscall types given (the harness gives those Mayfly's full pipeline
captures), with the caller's pid, tid, uid, gid, comm and cgroup id, its six arguments, its first path argument read at entry (as
execsnoop and opensnoop read theirs) and its result. Not covered: what Mayfly adds by
keeping state (process lineage, fd tables, container identity), so the rules that read
those see them missing, as a BCC tool's would.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor import resources  # noqa: E402
from sensor.detect import rule_loader  # noqa: E402
from sensor.kernel import layout, syscalls  # noqa: E402
from sensor.kernel.syscalls import OPENS  # noqa: E402
from sensor.kernel.bpf_program import import_bcc  # noqa: E402
from sensor.detect.engine import event_types  # noqa: E402
from sensor.detect.evaluate import evaluate  # noqa: E402

PATH_LEN = layout.events().constants["MAYFLY_STR_LEN"]  # bytes of a path read: as much as Mayfly reads
PROGRAM = """
#include <uapi/linux/ptrace.h>

struct entry {
    u64 args[6];
    char path[PATH_LEN];
};
struct event {
    u64 cgroup_id;
    u32 pid, tid, uid, gid;
    s64 nr, ret;
    u64 args[6];
    char comm[16];
    char path[PATH_LEN];
};

BPF_ARRAY(path_arg, s32, 512);   /* per syscall number: -1 not captured, 6 no path, else its index */
BPF_HASH(entries, u32, struct entry, 10240);
BPF_PERCPU_ARRAY(scratch, struct entry, 1);
BPF_PERF_OUTPUT(events);

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    int nr = args->id, zero = 0;
    s32 *index = path_arg.lookup(&nr);
    if (!index || *index < 0)
        return 0;
    struct entry *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    for (int i = 0; i < 6; i++)
        e->args[i] = args->args[i];
    e->path[0] = 0;
    if (*index < 6)
        bpf_probe_read_user_str(e->path, sizeof(e->path), (void *)e->args[*index & 7]);
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
    ev.cgroup_id = bpf_get_current_cgroup_id();
    ev.pid = id >> 32;
    ev.tid = tid;
    ev.uid = ugid;
    ev.gid = ugid >> 32;
    ev.nr = args->id;
    ev.ret = args->ret;
    __builtin_memcpy(ev.args, e->args, sizeof(ev.args));
    __builtin_memcpy(ev.path, e->path, sizeof(ev.path));
    bpf_get_current_comm(ev.comm, sizeof(ev.comm));
    events.perf_submit(args, &ev, sizeof(ev));
    entries.delete(&tid);
    return 0;
}
"""


def coverage(table: syscalls.SyscallTable, types) -> dict[int, int]:
    """Syscall number -> the index of its first path argument (6: none), for `types`."""
    result = {}
    for name, syscall in table.syscalls.items():
        if name in types:
            paths = [i for i, (_, kind) in enumerate(syscall.args) if kind == "path"]
            result[syscall.nr] = paths[0] if paths else 6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", required=True, help="comma-separated syscall types to capture")
    parser.add_argument("--rules", action="append", help="rule file (repeatable); default: Mayfly's built-in rules")
    parser.add_argument("--marker", help="the one rule instead: an open of this path")
    args = parser.parse_args()
    ruleset = rule_loader.load(args.rules or resources.builtin_rule_files())
    table = syscalls.table()
    covered = coverage(table, set(args.types.split(",")))
    # Each event is tested only against the rules its type can match, as Falco indexes them.
    by_type = {name: [c for c in ruleset.conditions.values() if (event_types(c) is None or name in event_types(c))]
               for name in table.syscalls}

    bcc = import_bcc()
    bpf = bcc.BPF(text=PROGRAM, cflags=[f"-DPATH_LEN={PATH_LEN}"])
    path_arg = bpf[b"path_arg"]
    for nr in range(512):
        path_arg[ctypes.c_int(nr)] = ctypes.c_int(covered.get(nr, -1))

    marker = args.marker.encode() if args.marker else None
    counts = collections.Counter()
    totals = {"events": 0, "lost": 0, "alerts": 0}

    def on_event(_cpu, data, _size):
        event = bpf[b"events"].event(data)
        syscall = table.by_nr[event.nr]
        if marker is not None:
            totals["alerts"] += syscall.name in OPENS and event.path == marker
        else:
            evt = {"type": syscall.name, "res": event.ret}
            for i, (name, kind) in enumerate(syscall.args):
                evt[name] = event.path.decode(errors="replace") if kind == "path" else event.args[i]
            record = {"evt": evt, "proc": {"pid": event.pid, "tid": event.tid, "uid": event.uid, "gid": event.gid,
                                           "comm": event.comm.decode(errors="replace")},
                      "container": {"cgroup_id": event.cgroup_id}}
            totals["alerts"] += sum(evaluate(condition, record) for condition in by_type[syscall.name])
        totals["events"] += 1
        counts[event.cgroup_id] += 1

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
    print(json.dumps({**totals, "by_cgroup": counts}), flush=True)


if __name__ == "__main__":
    main()

/* Mayfly's kernel programs. Stable interfaces only (see ebpf/README.md):
 * tracepoint arguments, BPF helpers and uapi types. Never read a kernel struct.
 *
 * Configured by sensor/bpf_program.py through cflags; every MAYFLY_* knob below
 * must be defined there.
 */
#include "events.h"

#ifndef MAYFLY_RINGBUF_PAGES
#error "MAYFLY_RINGBUF_PAGES must be set by the loader's cflags"
#endif
#ifndef MAYFLY_MAX_PROCS
#error "MAYFLY_MAX_PROCS must be set by the loader's cflags"
#endif

BPF_RINGBUF_OUTPUT(events, MAYFLY_RINGBUF_PAGES);
BPF_ARRAY(stats, u64, MAYFLY_STAT_COUNT);
/* tgid -> parent tgid, learnt at fork and seeded from /proc at start, because
 * task_struct's layout is not a stable interface. */
BPF_TABLE("lru_hash", u32, u32, parent_of, MAYFLY_MAX_PROCS);

static __always_inline void count_stat(u32 index)
{
    u64 *value = stats.lookup(&index);
    if (value)
        __sync_fetch_and_add(value, 1);
}

static __always_inline void fill_header(struct mayfly_event_header *hdr, u16 kind, u16 size)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    u32 tgid = pid_tgid >> 32;
    u32 *parent = parent_of.lookup(&tgid);

    hdr->kind = kind;
    hdr->size = size;
    hdr->_pad0 = 0;
    hdr->ktime_ns = bpf_ktime_get_ns();
    hdr->cgroup_id = bpf_get_current_cgroup_id();
    hdr->pid = tgid;
    hdr->tid = (u32)pid_tgid;
    hdr->ppid = parent ? *parent : 0;
    hdr->uid = (u32)uid_gid;
    hdr->gid = uid_gid >> 32;
    hdr->_pad1 = 0;
    bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    u32 child = args->child_pid;

    parent_of.update(&child, &parent);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;

    if (tgid == (u32)pid_tgid)
        parent_of.delete(&tgid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    struct mayfly_exec_event *event = events.ringbuf_reserve(sizeof(*event));
    if (!event) {
        count_stat(MAYFLY_STAT_RINGBUF_FULL);
        return 0;
    }
    fill_header(&event->hdr, MAYFLY_EVENT_EXEC, sizeof(*event));
    event->old_pid = args->old_pid;
    event->_pad0 = 0;
    bpf_probe_read_kernel_str(event->filename, sizeof(event->filename),
                              (void *)args + (args->data_loc_filename & 0xFFFF));
    events.ringbuf_submit(event, 0);
    return 0;
}

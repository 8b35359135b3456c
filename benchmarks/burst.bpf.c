/* Load generator for the transport benchmark: every prctl(PR_GET_DUMPABLE, own pid)
 * puts BURST prctl records into the ring, laid out and woken up as the sensor's are, so
 * that the consumers, not the producer, set the pace. A process marks its calls by
 * passing its own pid, so nothing else on the host adds records.
 * cflags: -I<ebpf dir> -DRINGBUF_PAGES=N -DBURST=N -DWAKEUP_EVERY=N */
#include <asm/unistd.h>
#include <uapi/linux/prctl.h>
#include "events.h"

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);
BPF_PERCPU_ARRAY(since_wakeup, u32, 1);
BPF_PERCPU_ARRAY(scratch, struct mayfly_syscall_event, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_prctl)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (args->option != PR_GET_DUMPABLE || args->arg2 != pid_tgid >> 32)
        return 0;
    u32 zero = 0;
    struct mayfly_syscall_event *e = scratch.lookup(&zero);
    u32 *count = since_wakeup.lookup(&zero);
    u64 *dropped = lost.lookup(&zero);
    if (!e || !count || !dropped)
        return 0;
    u32 size = offsetof(struct mayfly_syscall_event, data);
    e->hdr.kind = MAYFLY_EVENT_SYSCALL;
    e->hdr.size = size;
    e->hdr.ktime_ns = bpf_ktime_get_ns();
    e->hdr.pid = pid_tgid >> 32;
    e->hdr.tid = pid_tgid;
    e->nr = __NR_prctl;
    e->args[0] = args->option;
    for (int i = 0; i < BURST; i++) {
        u64 flags = BPF_RB_NO_WAKEUP;
        if (++*count >= WAKEUP_EVERY) {
            *count = 0;
            flags = BPF_RB_FORCE_WAKEUP;
        }
        if (events.ringbuf_output(e, size, flags))
            (*dropped)++;
    }
    return 0;
}

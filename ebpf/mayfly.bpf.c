/* Mayfly's kernel programs. Stable interfaces only (see ebpf/README.md):
 * tracepoint arguments, BPF helpers and uapi types and constants. The one kernel
 * struct read, struct pt_regs, is the syscall register frame: on x86_64 its layout
 * is the ptrace ABI (uapi asm/ptrace.h) and does not change between releases.
 *
 * Configured by sensor/kernel/bpf_program.py through cflags: every MAYFLY_* knob below must
 * be defined there, and each optional tracepoint is compiled in only when the loader
 * found it in tracefs (MAYFLY_TP_*).
 */
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/fcntl.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/if_ether.h>
#include <linux/socket.h>
#include <linux/signal.h>
#include "events.h"

#if !defined(MAYFLY_RINGBUF_PAGES) || !defined(MAYFLY_SPILL_PAGES) || !defined(MAYFLY_MAX_PROCS) || \
    !defined(MAYFLY_MAX_PENDING) || !defined(MAYFLY_MAX_CGROUPS) || !defined(MAYFLY_MAX_FDS) || !defined(MAYFLY_MAX_FLOWS) || \
    !defined(MAYFLY_COUNT_SLOTS) || !defined(MAYFLY_COUNT_SYSCALLS) || !defined(MAYFLY_PENDING_SLOTS)
#error "the loader's cflags must set every MAYFLY_* size"
#endif
#if MAYFLY_EXPECTED_SCHEMA != MAYFLY_SCHEMA_VERSION
#error "events.h changed: user space decodes another schema version"
#endif

#define SLOT(e, i) ((char *)(e)->data + (i) * MAYFLY_STR_LEN)
#define NTOHS(x) __builtin_bswap16(x) /* BCC compiles for the (little-endian) host */

BPF_RINGBUF_OUTPUT(events, MAYFLY_RINGBUF_PAGES);
/* Lifecycle events (cgroups, forks, exits, execs) that found `events` full: without
 * them user space would lose track of containers and processes while one floods. */
BPF_RINGBUF_OUTPUT(spill, MAYFLY_SPILL_PAGES);
BPF_ARRAY(config, struct mayfly_config, 1);
/* Until when the ring counts as under pressure (MAYFLY_PRESSURE_HOLD_NS). */
BPF_ARRAY(pressure, u64, 1);
/* Written by user space only: the needles (events.h), and a per-CPU key to look one up. */
BPF_LPM_TRIE(needles, struct mayfly_needle_key, u8, MAYFLY_MAX_NEEDLES);
BPF_PERCPU_ARRAY(needle_key, struct mayfly_needle_key, 1);
BPF_ARRAY(syscall_specs, struct mayfly_syscall_spec, MAYFLY_MAX_SYSCALLS);
BPF_PERCPU_ARRAY(stats, u64, MAYFLY_STAT_COUNT);
BPF_PERCPU_ARRAY(ring_lost, u64, MAYFLY_RING_LOST_SLOTS);
BPF_PERCPU_ARRAY(since_wakeup, u32, 1);
BPF_PERCPU_ARRAY(scratch, struct mayfly_syscall_event, 1);
BPF_PERCPU_ARRAY(regs_copy, struct pt_regs, 1);
/* A syscall's event between its enter and its exit: in its thread's slot (thread id
 * modulo MAYFLY_PENDING_SLOTS, claimed atomically), or in the hash when two threads
 * inside captured syscalls share a slot. */
struct pending_slot {
    u64 owner; /* thread id + 1; 0 when free */
    struct mayfly_syscall_event event;
};
BPF_ARRAY(pending_slots, struct pending_slot, MAYFLY_PENDING_SLOTS);
BPF_HASH(pending, u32, struct mayfly_syscall_event, MAYFLY_MAX_PENDING);
BPF_HASH(cgroup_state, u64, struct mayfly_cgroup_state, MAYFLY_MAX_CGROUPS);
/* Written by user space only: cgroups whose events are dropped (MAYFLY_POLICY_*). */
BPF_HASH(cgroup_policy, u64, u32, MAYFLY_MAX_CGROUPS);
/* Written by user space only: the host's cgroups, where no process is ever stopped
 * (MAYFLY_NEEDLE_STOP). A cgroup not yet named may be a container's. */
BPF_HASH(host_cgroups, u64, u8, MAYFLY_MAX_CGROUPS);
/* The processes stopped at a stopping needle, and when: user space continues or kills
 * each and deletes its entry, and continues any left here too long (a lost event). */
BPF_HASH(stopped_tasks, u32, u64, MAYFLY_MAX_STOPPED);
/* Written by user space only: the process names whose exec stops, as needle bits (events.h). */
BPF_HASH(stop_comms, struct mayfly_comm_key, u8, MAYFLY_MAX_STOP_COMMS);
/* The spawn gate (events.h): `gate` and `verdicts` are written by user space; the kernel
 * adds a pending verdict and the processes it holds. */
BPF_ARRAY(gate, u32, 1);
BPF_HASH(verdicts, u64, u8, MAYFLY_MAX_CGROUPS);
BPF_TABLE_PINNED("hash", u32, struct mayfly_gate_hold, gated_tasks, MAYFLY_MAX_GATED, MAYFLY_GATE_PIN);
/* Network isolation (events.h), written by user space only. */
BPF_ARRAY(isolating, u64, 1);
BPF_HASH(isolated, u64, u8, MAYFLY_MAX_ISOLATED);
BPF_LPM_TRIE(isolate_allow, struct mayfly_allow_key, u8, MAYFLY_MAX_ALLOWED);
#if MAYFLY_COUNT_SYSCALLS
BPF_PERCPU_ARRAY(syscall_counts, struct mayfly_count_row, MAYFLY_COUNT_SLOTS);
BPF_HASH(count_slots, u64, u32, MAYFLY_COUNT_SLOTS);
BPF_QUEUE(free_count_slots, u32, MAYFLY_COUNT_SLOTS);
/* Internal: the task this CPU counted last, known by its syscall register frame (which
 * is unique to a live task), with its cgroup and that cgroup's slot. A run of syscalls
 * from one task then costs inlined array lookups only: helper calls are what cost here.
 * `count_epoch` moves on at every new task (it may get a dead task's frame) and every
 * cgroup migration, which empties every CPU's cache. */
struct count_cache {
    u64 frame;
    u64 epoch;
    u64 cgroup_id;
    u32 slot;
    u32 _pad;
};
BPF_PERCPU_ARRAY(count_cache, struct count_cache, 1);
BPF_ARRAY(count_epoch, u64, 1);
#endif
BPF_TABLE("lru_hash", struct mayfly_fd_key, u8, tracked_fds, MAYFLY_MAX_FDS);
BPF_TABLE("lru_hash", struct mayfly_flow_key, struct mayfly_flow_value, flows, MAYFLY_MAX_FLOWS);
/* tgid -> parent tgid, learnt at fork and seeded from /proc at start, because
 * task_struct's layout is not a stable interface. */
BPF_TABLE("lru_hash", u32, u32, parent_of, MAYFLY_MAX_PROCS);

/* Internal: how a process ends, gathered from exit_group and signal delivery. */
struct exit_info {
    s32 code;
    s32 signal;
    u32 has_code;
};
BPF_TABLE("lru_hash", u32, struct exit_info, exit_info, MAYFLY_MAX_PROCS);

#if MAYFLY_COUNT_SYSCALLS
/* The counter row of the task whose syscall frame this is: its cgroup's row, else a
 * free one (MAYFLY_COUNT_OVERFLOW_SLOT when none is left). */
static __always_inline u32 count_slot(u64 frame)
{
    u32 zero = 0;
    struct count_cache *cache = count_cache.lookup(&zero);
    u64 *epoch_now = count_epoch.lookup(&zero);
    if (!cache || !epoch_now)
        return MAYFLY_COUNT_OVERFLOW_SLOT;
    u64 epoch = *epoch_now; /* read before the cgroup: a migration in between moves it on */
#ifdef MAYFLY_TP_CGROUP_ATTACH
    if (cache->frame == frame && cache->epoch == epoch)
        return cache->slot;
#endif
    u64 cgroup_id = bpf_get_current_cgroup_id();
    cache->frame = frame;
    cache->epoch = epoch;
    if (cache->cgroup_id == cgroup_id)
        return cache->slot;
    u32 slot;
    u32 *known = count_slots.lookup(&cgroup_id);
    if (known) {
        slot = *known;
    } else if (free_count_slots.pop(&slot) == 0) {
        if (count_slots.insert(&cgroup_id, &slot)) {
            /* Another CPU gave this cgroup a slot first: give ours back. */
            free_count_slots.push(&slot, 0);
            known = count_slots.lookup(&cgroup_id);
            slot = known ? *known : MAYFLY_COUNT_OVERFLOW_SLOT;
        }
    } else {
        cache->frame = 0; /* not cached: the next syscall looks for a free row again */
        return MAYFLY_COUNT_OVERFLOW_SLOT;
    }
    cache->cgroup_id = cgroup_id;
    cache->slot = slot;
    return slot;
}

/* A new task or a cgroup migration: every CPU's count_cache entry is stale. */
static __always_inline void count_epoch_advance(void)
{
    u32 zero = 0;
    u64 *epoch = count_epoch.lookup(&zero);
    if (epoch)
        __sync_fetch_and_add(epoch, 1);
}
#endif

static __always_inline struct mayfly_config *get_config(void)
{
    u32 zero = 0;
    return config.lookup(&zero);
}

static __always_inline void count_stat(u32 index)
{
    u64 *value = stats.lookup(&index);
    if (value)
        (*value)++;
}

static __always_inline struct pending_slot *slot_of(u32 tid)
{
    u32 index = tid & (MAYFLY_PENDING_SLOTS - 1);
    return pending_slots.lookup(&index);
}

/* Where to build a new held event: the thread's slot if it can be had, else the
 * per-CPU scratch (which hold() copies into the hash). */
static __always_inline struct mayfly_syscall_event *claim(u32 tid, int *in_slot)
{
    u32 zero = 0;
    struct pending_slot *slot = slot_of(tid);
    if (slot && (slot->owner == tid + 1 || __sync_val_compare_and_swap(&slot->owner, 0, tid + 1) == 0)) {
        *in_slot = 1;
        return &slot->event;
    }
    *in_slot = 0;
    return scratch.lookup(&zero);
}

/* Keep a built event until its exit. 0 when kept. */
static __always_inline int hold(u32 tid, struct mayfly_syscall_event *e, int in_slot)
{
    if (in_slot)
        return 0;
    if (pending.update(&tid, e)) {
        count_stat(MAYFLY_STAT_PENDING_FULL);
        return -1;
    }
    return 0;
}

static __always_inline struct mayfly_syscall_event *held_event(u32 tid, int *in_slot)
{
    struct pending_slot *slot = slot_of(tid);
    if (slot && slot->owner == tid + 1) {
        *in_slot = 1;
        return &slot->event;
    }
    *in_slot = 0;
    return pending.lookup(&tid);
}

static __always_inline void release(u32 tid, int in_slot)
{
    struct pending_slot *slot = in_slot ? slot_of(tid) : NULL;
    if (slot)
        slot->owner = 0;
    else if (!in_slot)
        pending.delete(&tid);
}

static __always_inline struct mayfly_cgroup_state *cgroup_state_of(u64 cgroup_id, struct mayfly_config *cfg)
{
    struct mayfly_cgroup_state *state = cgroup_state.lookup(&cgroup_id);
    if (!state) {
        struct mayfly_cgroup_state fresh = {};
        fresh.credit_ns = cfg->burst_ns;
        fresh.refill_ns = bpf_ktime_get_ns();
        cgroup_state.insert(&cgroup_id, &fresh);
        state = cgroup_state.lookup(&cgroup_id); /* NULL when the table is full */
    }
    return state;
}

static __always_inline void count_ring_lost(u32 slot, u64 cgroup_id, struct mayfly_config *cfg)
{
    u32 zero = 0;
    u64 *until = pressure.lookup(&zero);
    if (until && *until != ~0ULL)
        *until = bpf_ktime_get_ns() + MAYFLY_PRESSURE_HOLD_NS;
    u64 *value = ring_lost.lookup(&slot);
    if (value)
        (*value)++;
    count_stat(MAYFLY_STAT_RING_FULL);
    struct mayfly_cgroup_state *state = cgroup_state_of(cgroup_id, cfg);
    if (state)
        __sync_fetch_and_add(&state->ring_lost, 1);
}

/* Lifecycle events wake user space at once; the rest every `wakeup_every` records
 * per CPU, and otherwise user space's poll timer picks them up. */
static __always_inline u64 wakeup_flags(struct mayfly_config *cfg, int urgent)
{
    u32 zero = 0;
    u32 *count = since_wakeup.lookup(&zero);
    if (urgent || !count)
        return BPF_RB_FORCE_WAKEUP;
    if (++*count >= cfg->wakeup_every) {
        *count = 0;
        return BPF_RB_FORCE_WAKEUP;
    }
    return BPF_RB_NO_WAKEUP;
}

/* Is this cgroup traced at all? (User space drops the host's cgroups when the rules
 * look at containers alone.) */
static __always_inline int tracked(u64 cgroup_id)
{
    u32 *policy = cgroup_policy.lookup(&cgroup_id);
    return !policy || *policy != MAYFLY_POLICY_IGNORE;
}

/* Is the ring under pressure now (MAYFLY_PRESSURE_HOLD_NS)? */
static __always_inline int under_pressure(u64 now)
{
    u32 zero = 0;
    u64 *until = pressure.lookup(&zero);
    return until && now < *until;
}

/* May this cgroup emit one more event by its token bucket? Every event spends the
 * bucket's credit, but an empty bucket holds the cgroup back only while the ring is
 * under pressure: a lone busy cgroup gets the whole drain, and a flooding one is the
 * first held back when the ring fills. Lifecycle events (forks, execs, exits, cgroups)
 * never ask: a container cannot spend its budget and then run a shell unseen. What is
 * held back is counted by the caller (count_limited), which may still send a needle. */
static __always_inline int within_budget(u64 cgroup_id, struct mayfly_config *cfg)
{
    if (!cfg->cost_ns)
        return 1;
    struct mayfly_cgroup_state *state = cgroup_state_of(cgroup_id, cfg);
    if (!state)
        return 1; /* table full: trace it, unaccounted per cgroup */
    /* Races between CPUs can mis-credit a little; the bucket stays bounded. */
    u64 now = bpf_ktime_get_ns();
    u64 credit = state->credit_ns + (now > state->refill_ns ? now - state->refill_ns : 0);
    if (credit > cfg->burst_ns)
        credit = cfg->burst_ns;
    state->refill_ns = now;
    if (credit < cfg->cost_ns) {
        state->credit_ns = credit;
        return !under_pressure(now);
    }
    state->credit_ns = credit - cfg->cost_ns;
    return 1;
}

static __always_inline void count_limited(u64 cgroup_id, struct mayfly_config *cfg)
{
    struct mayfly_cgroup_state *state = cgroup_state_of(cgroup_id, cfg);
    if (state)
        __sync_fetch_and_add(&state->rate_limited, 1);
    count_stat(MAYFLY_STAT_RATE_LIMITED);
}

/* The bits (MAYFLY_NEEDLE_*) of the needle this event's slot 0 path is (the `needles`
 * trie; 0: none). What follows the path's NUL in the slot is stale: an exact entry ends
 * at the NUL. */
static __always_inline u8 needle_of(struct mayfly_syscall_event *e)
{
    u32 zero = 0;
    struct mayfly_needle_key *key = needle_key.lookup(&zero);
    if (!key)
        return 0;
    key->prefixlen = 32 + 8 * MAYFLY_NEEDLE_LEN;
    key->nr = e->nr;
    __builtin_memcpy(key->path, e->data, MAYFLY_NEEDLE_LEN);
    u8 *bits = needles.lookup(key);
    return bits ? *bits : 0;
}

static __always_inline void fill_header(struct mayfly_event_header *hdr, u16 kind, u16 size,
                                        u64 pid_tgid, u64 cgroup_id)
{
    u64 uid_gid = bpf_get_current_uid_gid();
    u32 tgid = pid_tgid >> 32;
    u32 *parent = parent_of.lookup(&tgid);

    hdr->kind = kind;
    hdr->size = size;
    hdr->_pad0 = 0;
    hdr->ktime_ns = bpf_ktime_get_ns();
    hdr->cgroup_id = cgroup_id;
    hdr->pid = tgid;
    hdr->tid = (u32)pid_tgid;
    hdr->ppid = parent ? *parent : 0;
    hdr->uid = (u32)uid_gid;
    hdr->gid = uid_gid >> 32;
    hdr->_pad1 = 0;
    bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

/* ---- syscalls: one generic capture, driven by syscall_specs ---- */

static __always_inline u64 pick(u64 *args, u8 index)
{
    switch (index) {
    case 0: return args[0];
    case 1: return args[1];
    case 2: return args[2];
    case 3: return args[3];
    case 4: return args[4];
    default: return args[5];
    }
}

/* Does this open meet a stopping needle's access (MAYFLY_NEEDLE_STOP_*)? */
static __always_inline int stops(struct mayfly_syscall_spec *spec, u64 *args, u8 needle)
{
    u8 wanted = needle & (MAYFLY_NEEDLE_STOP_READ | MAYFLY_NEEDLE_STOP_WRITE);
    if (!wanted)
        return 0;
    if (spec->flags & MAYFLY_SPEC_OPEN_WRITES)
        return wanted & MAYFLY_NEEDLE_STOP_WRITE;
    u8 at = spec->open_flags_arg;
    if (at == 0 || at > 5)
        return 1;
    u64 access = pick(args, at) & O_ACCMODE;
    return ((access == O_RDONLY || access == O_RDWR) && (wanted & MAYFLY_NEEDLE_STOP_READ))
        || ((access == O_WRONLY || access == O_RDWR) && (wanted & MAYFLY_NEEDLE_STOP_WRITE));
}

/* A stopping needle's process, in a container: stopped before it returns to user space;
 * or killed, when the needle kills (an in-kernel kill: nothing to let go). */
static __always_inline void stop_task(struct mayfly_syscall_event *e, u32 tgid, u8 needle)
{
    if (needle & MAYFLY_NEEDLE_KILL) {
        bpf_send_signal(SIGKILL);
        e->flags |= MAYFLY_SYSCALL_KILLED;
        return;
    }
    bpf_send_signal(SIGSTOP);
    e->flags |= MAYFLY_SYSCALL_STOPPED;
    u64 now = bpf_ktime_get_ns();
    stopped_tasks.update(&tgid, &now);
}

#define USER32_CS 0x23 /* the code segment of ia32 (compat) tasks on x86_64 */

/* The strings of a user array of `ptr_size`-byte pointers (8, or 4 for an ia32 image). */
static __always_inline void read_argv(struct mayfly_syscall_event *e, u64 argv, u32 ptr_size)
{
    /* Arguments start within slot 1 and may run on into slot 2: the verifier can
     * then bound every write by a constant. */
    char *area = SLOT(e, 1);
    u32 used = 0;
    for (int i = 0; i < MAYFLY_ARGV_MAX + 1; i++) {
        u64 arg = 0;
        int err = ptr_size == 4 ? bpf_probe_read_user(&arg, 4, (const void *)(argv + i * 4))
                                : bpf_probe_read_user(&arg, 8, (const void *)(argv + i * 8));
        if (err || !arg)
            break;
        if (i == MAYFLY_ARGV_MAX || used >= MAYFLY_STR_LEN) {
            e->truncated |= 1 << 1;
            break;
        }
        int n = bpf_probe_read_user_str(area + (used & (MAYFLY_STR_LEN - 1)), MAYFLY_STR_LEN, (const void *)arg);
        if (n <= 0)
            break;
        if (n == MAYFLY_STR_LEN)
            e->truncated |= 1 << 1;
        used += n;
    }
    e->slot_len[1] = used;
}

static __always_inline void read_slot(struct mayfly_syscall_event *e, struct mayfly_slot_spec *spec,
                                      u64 *args, int slot, int at_exit)
{
    char *dst = SLOT(e, slot);
    const void *src = (const void *)pick(args, spec->arg);
    u64 len = 0;
    int n = 0;

    /* Slots are read at enter, but what the kernel writes (the _OUT reads) only at exit,
     * and a string that failed at enter (its page not yet faulted in) is tried again. */
    int out = spec->read == MAYFLY_READ_BYTES_OUT || spec->read == MAYFLY_READ_FIXED_OUT;
    if (at_exit ? !out && (e->slot_len[slot] || spec->read == MAYFLY_READ_ARGV) : out)
        return;
    switch (spec->read) {
    case MAYFLY_READ_STR:
        n = bpf_probe_read_user_str(dst, MAYFLY_STR_LEN, src);
        if (n == MAYFLY_STR_LEN)
            e->truncated |= 1 << slot;
        break;
    case MAYFLY_READ_BYTES:
        len = pick(args, spec->len_arg);
        goto bytes;
    case MAYFLY_READ_BYTES_OUT: {
        int out_len = 0;
        if (e->result < 0)
            return;
        bpf_probe_read_user(&out_len, sizeof(out_len), (const void *)pick(args, spec->len_arg));
        len = out_len < 0 ? 0 : out_len;
        goto bytes;
    }
    case MAYFLY_READ_FIXED_OUT:
        if (e->result < 0)
            return;
        /* fall through */
    case MAYFLY_READ_FIXED:
        len = spec->len;
    bytes:
        if (len > MAYFLY_STR_LEN) {
            len = MAYFLY_STR_LEN;
            e->truncated |= 1 << slot;
        }
        if (len && src && !bpf_probe_read_user(dst, len, src))
            n = len;
        break;
    case MAYFLY_READ_ARGV:
        if (slot == 1)
            read_argv(e, (u64)src, 8);
        return;
    default:
        return;
    }
    e->slot_len[slot] = n > 0 ? n : 0;
}

static __always_inline u32 syscall_event_size(struct mayfly_syscall_event *e)
{
    u32 slots = e->slot_len[2] ? 3 : e->slot_len[1] ? 2 : e->slot_len[0] ? 1 : 0;
    return offsetof(struct mayfly_syscall_event, data) + slots * MAYFLY_STR_LEN;
}

static __always_inline void send_syscall(struct mayfly_syscall_event *e, struct mayfly_config *cfg, int urgent)
{
    u32 size = syscall_event_size(e);
    if (size > sizeof(*e))
        size = sizeof(*e);
    e->hdr.size = size;
    urgent |= e->flags & MAYFLY_SYSCALL_NEEDLE;
    u64 flags = wakeup_flags(cfg, urgent);
    if (events.ringbuf_output(e, size, flags) && (!urgent || spill.ringbuf_output(e, size, flags)))
        count_ring_lost(MAYFLY_KINDS_MAX + (e->nr & (MAYFLY_MAX_SYSCALLS - 1)), e->hdr.cgroup_id, cfg);
}

static __always_inline int fd_tracked(u32 tgid, u64 fd)
{
    struct mayfly_fd_key key = {.tgid = tgid, .fd = (s32)fd};
    return tracked_fds.lookup(&key) != NULL;
}

/* The syscall's register frame, with one read. */
static __always_inline struct pt_regs *read_frame(struct pt_regs *regs)
{
    u32 zero = 0;
    struct pt_regs *frame = regs_copy.lookup(&zero);
    if (!frame || bpf_probe_read_kernel(frame, sizeof(*frame), regs))
        return NULL;
    return frame;
}

static __always_inline void read_args(struct pt_regs *frame, u64 *args)
{
    args[0] = frame->di;
    args[1] = frame->si;
    args[2] = frame->dx;
    args[3] = frame->r10;
    args[4] = frame->r8;
    args[5] = frame->r9;
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
    u64 nr = ctx->args[1];
#if MAYFLY_COUNT_SYSCALLS
    /* Every syscall of every cgroup is counted: the baselines' raw material. */
    u32 slot = count_slot(ctx->args[0]);
    struct mayfly_count_row *row = syscall_counts.lookup(&slot);
    if (row && nr < MAYFLY_MAX_SYSCALLS)
        row->n[nr]++;
#endif

    u32 index = nr;
    struct mayfly_syscall_spec *spec = syscall_specs.lookup(&index);
    if (!spec || !(spec->flags & (MAYFLY_SPEC_EMIT | MAYFLY_SPEC_EXIT_CODE)))
        return 0; /* what nobody asked for stops here */

    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    struct mayfly_config *cfg = get_config();
    if (!cfg || tgid == cfg->self_tgid)
        return 0;
    struct pt_regs *frame = read_frame((struct pt_regs *)ctx->args[0]);
    if (!frame)
        return 0;
    if (frame->cs == USER32_CS) {
        /* An ia32 syscall: its number means another syscall here, and its arguments
         * sit in other registers. Counted, not decoded. */
        count_stat(MAYFLY_STAT_COMPAT);
        return 0;
    }
    u64 args[6] = {};
    read_args(frame, args);

    if (spec->flags & MAYFLY_SPEC_EXIT_CODE) {
        struct exit_info fresh = {};
        exit_info.insert(&tgid, &fresh);
        struct exit_info *info = exit_info.lookup(&tgid);
        if (info) {
            info->code = (s32)args[0];
            info->has_code = 1;
        }
        return 0;
    }
    if (spec->flags & MAYFLY_SPEC_TRACKED_FD0) {
        int wanted = fd_tracked(tgid, args[0]);
        if ((spec->flags & MAYFLY_SPEC_STDIO_FD1) && args[1] <= 2)
            wanted = 1;
        if ((spec->flags & MAYFLY_SPEC_DUPFD_CMD) && args[1] != F_DUPFD && args[1] != F_DUPFD_CLOEXEC)
            wanted = 0;
        if ((spec->flags & MAYFLY_SPEC_UNTRACK_FD0) && wanted) {
            struct mayfly_fd_key key = {.tgid = tgid, .fd = (s32)args[0]};
            tracked_fds.delete(&key);
        }
        if (!wanted)
            return 0;
    }
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!tracked(cgroup_id))
        return 0;
    /* Over budget, only a needle goes on; under pressure, a needle is marked so that it
     * spills rather than be lost. An exec never asks the bucket. */
    int over = !(spec->flags & MAYFLY_SPEC_LIFECYCLE) && !within_budget(cgroup_id, cfg);
    int look = (spec->flags & MAYFLY_SPEC_NEEDLE) && (over || under_pressure(bpf_ktime_get_ns()));
    /* An exec stops in sched_process_exec, on its new name too. */
    int stopping = (spec->flags & MAYFLY_SPEC_STOP) && !(spec->flags & MAYFLY_SPEC_LIFECYCLE)
        && !host_cgroups.lookup(&cgroup_id);
    if (over && !look && !stopping) {
        count_limited(cgroup_id, cfg);
        return 0;
    }

    u32 tid = pid_tgid, zero = 0;
    int at_enter = spec->flags & MAYFLY_SPEC_AT_ENTER;
    int in_slot = 0;
    struct mayfly_syscall_event *e = at_enter ? scratch.lookup(&zero) : claim(tid, &in_slot);
    if (!e)
        return 0;
    fill_header(&e->hdr, MAYFLY_EVENT_SYSCALL, 0, pid_tgid, cgroup_id);
    e->nr = nr;
    e->truncated = 0;
    e->flags = at_enter ? MAYFLY_SYSCALL_NO_RESULT : 0;
    e->_pad1 = 0;
    e->result = 0;
    for (int i = 0; i < 6; i++)
        e->args[i] = args[i];
    for (int i = 0; i < MAYFLY_STR_SLOTS; i++) {
        e->slot_len[i] = 0;
        read_slot(e, &spec->slot[i], args, i, 0);
    }
    u8 needle = (look || stopping) ? needle_of(e) : 0;
    if (stopping && stops(spec, args, needle))
        stop_task(e, tgid, needle);
    if ((look && (needle & MAYFLY_NEEDLE_FLOOD)) || (e->flags & MAYFLY_SYSCALL_STOPPED)) {
        e->flags |= MAYFLY_SYSCALL_NEEDLE; /* a stopped process's event is never lost to a flood */
    } else if (over) {
        count_limited(cgroup_id, cfg);
        if (in_slot)
            release(tid, in_slot);
        return 0;
    }
    if (at_enter)
        send_syscall(e, cfg, 0);
    else
        hold(tid, e, in_slot);
    return 0;
}

/* The exit of a captured syscall, attached by the loader to syscalls:sys_exit_<name>
 * for each one captured with its result. (A raw sys_exit program would run at the exit
 * of every syscall; enabling these costs the others one bit test in the kernel.) Every
 * per-syscall exit tracepoint has this format. */
struct syscall_exit_args {
    u64 _common;
    s32 nr;
    s32 _pad;
    s64 ret;
};

int syscall_exit(struct syscall_exit_args *args)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = pid_tgid, index = args->nr;
    int in_slot;
    struct mayfly_syscall_event *e = held_event(tid, &in_slot);
    if (!e)
        return 0;
    struct mayfly_config *cfg = get_config();
    struct mayfly_syscall_spec *spec = syscall_specs.lookup(&index);
    /* What is held may be another syscall's, whose exit was not seen: drop it. */
    if (cfg && spec && e->nr == index) {
        long ret = args->ret;
        e->result = ret;
        for (int i = 0; i < MAYFLY_STR_SLOTS; i++)
            read_slot(e, &spec->slot[i], e->args, i, 1);
        u8 yes = 1;
        if (ret >= 0 && (spec->flags & MAYFLY_SPEC_TRACK_RESULT)) {
            struct mayfly_fd_key key = {.tgid = pid_tgid >> 32, .fd = ret};
            tracked_fds.update(&key, &yes);
        }
        if (ret == 0 && (spec->flags & MAYFLY_SPEC_TRACK_PAIR) && e->slot_len[0] == 2 * sizeof(s32)) {
            s32 *pair = (s32 *)SLOT(e, 0);
            struct mayfly_fd_key first = {.tgid = pid_tgid >> 32, .fd = pair[0]};
            struct mayfly_fd_key second = {.tgid = pid_tgid >> 32, .fd = pair[1]};
            tracked_fds.update(&first, &yes);
            tracked_fds.update(&second, &yes);
        }
        send_syscall(e, cfg, 0);
    }
    release(tid, in_slot);
    return 0;
}

/* The spawn gate (events.h), at an exec outside the host's cgroups: a cgroup with no
 * verdict, or a pending one, holds the process before the new image runs; a denied
 * cgroup's exec is killed. */
static __always_inline void gate_exec(struct mayfly_syscall_event *e, u32 tgid, u64 cgroup_id)
{
    u32 zero = 0;
    u32 *on = gate.lookup(&zero);
    if (!on || !*on)
        return;
    u8 *verdict = verdicts.lookup(&cgroup_id);
    if (verdict && *verdict == MAYFLY_VERDICT_DENY) {
        bpf_send_signal(SIGKILL);
        e->flags |= MAYFLY_SYSCALL_KILLED;
        return;
    }
    if (verdict && *verdict != MAYFLY_VERDICT_PENDING)
        return;
    if (!verdict) {
        u8 pending = MAYFLY_VERDICT_PENDING;
        verdicts.update(&cgroup_id, &pending);
    }
    struct mayfly_gate_hold hold = {.cgroup_id = cgroup_id, .since_ns = bpf_ktime_get_ns()};
    if (gated_tasks.update(&tgid, &hold))
        return; /* no room to remember it: better let it run than hold it for ever */
    bpf_send_signal(SIGSTOP);
    e->flags |= MAYFLY_SYSCALL_GATED;
}

/* A successful exec, sent from here: the kernel's resolved filename goes into slot 0,
 * and the argument vector is read again from the new image's stack, where the kernel
 * has just written it (the old image's pages may never have been faulted in). */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct mayfly_config *cfg = get_config();
    u32 tid = pid_tgid;
    /* A non-leader thread's exec takes over the leader's id: its event is held under
     * the id it entered with. */
    u32 holder = args->old_pid;
    int in_slot = 0;
    struct mayfly_syscall_event *e = held_event(holder, &in_slot);

    if (!cfg || (u32)(pid_tgid >> 32) == cfg->self_tgid)
        goto out;
    if (!e) {
        /* The enter was not seen (sensor started mid-exec, or no room to hold it). */
        holder = tid;
        if (!tracked(cgroup_id) || !(e = claim(holder, &in_slot)))
            return 0;
        e->nr = __NR_execve;
        e->truncated = 0;
        e->flags = 0;
        e->_pad1 = 0;
        for (int i = 0; i < 6; i++)
            e->args[i] = 0;
        for (int i = 0; i < MAYFLY_STR_SLOTS; i++)
            e->slot_len[i] = 0;
    }
    fill_header(&e->hdr, MAYFLY_EVENT_SYSCALL, 0, pid_tgid, cgroup_id);
    e->result = 0;
    e->truncated &= ~1;
    int n = bpf_probe_read_kernel_str(e->data, MAYFLY_STR_LEN, (void *)args + (args->data_loc_filename & 0xFFFF));
    e->slot_len[0] = n > 0 ? n : 0;
    if (n == MAYFLY_STR_LEN)
        e->truncated |= 1;
    struct pt_regs *frame = read_frame((struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf()));
    if (frame) {
        /* The new image's stack: argc at sp, then the argument pointers. */
        int compat = frame->cs == USER32_CS;
        e->truncated &= ~(1 << 1);
        if (compat)
            e->flags |= MAYFLY_SYSCALL_COMPAT;
        read_argv(e, frame->sp + (compat ? 4 : 8), compat ? 4 : 8);
    }
    /* exec SIGKILLs the other threads; the process itself lives on. */
    u32 tgid = pid_tgid >> 32;
    exit_info.delete(&tgid);
    u32 nr = e->nr;
    struct mayfly_syscall_spec *spec = syscall_specs.lookup(&nr);
    if (!host_cgroups.lookup(&cgroup_id)) {
        gate_exec(e, tgid, cgroup_id);
        if (spec && (spec->flags & MAYFLY_SPEC_STOP) && !(e->flags & (MAYFLY_SYSCALL_GATED | MAYFLY_SYSCALL_KILLED))) {
            /* Held, or killed, before the new image's first instruction. */
            struct mayfly_comm_key name = {};
            __builtin_memcpy(name.comm, e->hdr.comm, MAYFLY_COMM_LEN);
            u8 *by_name = stop_comms.lookup(&name);
            u8 needle = needle_of(e);
            if (by_name)
                stop_task(e, tgid, *by_name);
            else if (stops(spec, e->args, needle))
                stop_task(e, tgid, needle);
        }
    }
    send_syscall(e, cfg, 1);
out:
    if (e)
        release(holder, in_slot);
    return 0;
}

/* ---- process lifecycle ---- */

TRACEPOINT_PROBE(task, task_newtask)
{
#if MAYFLY_COUNT_SYSCALLS
    count_epoch_advance();
#endif
    if (args->clone_flags & CLONE_THREAD)
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 parent = pid_tgid >> 32;
    u32 child = args->pid;
    parent_of.update(&child, &parent);

    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct mayfly_config *cfg = get_config();
    if (!cfg || parent == cfg->self_tgid || !tracked(cgroup_id))
        return 0;
    struct mayfly_fork_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        e = spill.ringbuf_reserve(sizeof(*e));
    if (!e) {
        count_ring_lost(MAYFLY_EVENT_FORK, cgroup_id, cfg);
        return 0;
    }
    fill_header(&e->hdr, MAYFLY_EVENT_FORK, sizeof(*e), pid_tgid, cgroup_id);
    e->child_pid = child;
    e->_pad0 = 0;
    e->clone_flags = args->clone_flags;
    events.ringbuf_submit(e, wakeup_flags(cfg, 1));
    return 0;
}

static __always_inline int fatal_by_default(int sig)
{
    /* Signals whose default action is not to terminate. */
    switch (sig) {
    case 17: case 18: case 19: case 20: case 21: case 22: case 23: case 28: /* CHLD CONT STOP TSTP TTIN TTOU URG WINCH */
        return 0;
    default:
        return sig > 0 && sig < 32;
    }
}

TRACEPOINT_PROBE(signal, signal_deliver)
{
    if (args->sa_handler != 0 /* SIG_DFL */ || !fatal_by_default(args->sig))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct exit_info fresh = {};
    exit_info.insert(&tgid, &fresh);
    struct exit_info *info = exit_info.lookup(&tgid);
    if (info)
        info->signal = args->sig;
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = pid_tgid;
    int in_slot;
    if (held_event(tid, &in_slot)) /* a thread that died inside a captured syscall */
        release(tid, in_slot);
#ifdef MAYFLY_TP_EXIT_GROUP_DEAD
    if (!args->group_dead)
        return 0;
#else
    if (tgid != (u32)pid_tgid)
        return 0;
#endif
    /* exit_group SIGKILLs the caller's other threads: after an exit code, a SIGKILL
     * is that, not a cause of death. */
    struct exit_info *info = exit_info.lookup(&tgid);
    s32 code = info && info->has_code ? info->code : -1;
    s32 sig = info && !info->has_code ? info->signal : 0;
    exit_info.delete(&tgid);

    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct mayfly_config *cfg = get_config();
    if (cfg && tgid != cfg->self_tgid && tracked(cgroup_id)) {
        struct mayfly_exit_event *e = events.ringbuf_reserve(sizeof(*e));
        if (!e)
            e = spill.ringbuf_reserve(sizeof(*e));
        if (e) {
            fill_header(&e->hdr, MAYFLY_EVENT_EXIT, sizeof(*e), pid_tgid, cgroup_id);
            e->exit_code = code;
            e->signal = sig;
            events.ringbuf_submit(e, wakeup_flags(cfg, 0));
        } else {
            count_ring_lost(MAYFLY_EVENT_EXIT, cgroup_id, cfg);
        }
    }
    parent_of.delete(&tgid);
    return 0;
}

/* ---- cgroup2 lifecycle (hierarchy 0 is cgroup2; the others are v1) ---- */

static __always_inline void send_cgroup(u32 op, int root, int level, u64 id, const void *path)
{
    struct mayfly_config *cfg = get_config();
    if (root != 0 || !cfg || bpf_get_current_pid_tgid() >> 32 == cfg->self_tgid)
        return;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct mayfly_cgroup_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        e = spill.ringbuf_reserve(sizeof(*e));
    if (!e) {
        count_ring_lost(MAYFLY_EVENT_CGROUP, cgroup_id, cfg);
        return;
    }
    fill_header(&e->hdr, MAYFLY_EVENT_CGROUP, sizeof(*e), bpf_get_current_pid_tgid(), cgroup_id);
    e->id = id;
    e->op = op;
    e->level = level;
    bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
    events.ringbuf_submit(e, wakeup_flags(cfg, 1));
}

#ifdef MAYFLY_TP_CGROUP
TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
    send_cgroup(MAYFLY_CGROUP_MKDIR, args->root, args->level, args->id,
                (void *)args + (args->data_loc_path & 0xFFFF));
    return 0;
}

TRACEPOINT_PROBE(cgroup, cgroup_rmdir)
{
    send_cgroup(MAYFLY_CGROUP_RMDIR, args->root, args->level, args->id,
                (void *)args + (args->data_loc_path & 0xFFFF));
    return 0;
}
#endif

#if defined(MAYFLY_TP_CGROUP_ATTACH) && MAYFLY_COUNT_SYSCALLS
TRACEPOINT_PROBE(cgroup, cgroup_attach_task)
{
    count_epoch_advance();
    return 0;
}
#endif

/* ---- network ---- */

#ifdef MAYFLY_TP_INET_SOCK_SET_STATE
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    struct mayfly_config *cfg = get_config();
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!cfg || bpf_get_current_pid_tgid() >> 32 == cfg->self_tgid)
        return 0;
    struct mayfly_tcp_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        count_ring_lost(MAYFLY_EVENT_TCP, cgroup_id, cfg);
        return 0;
    }
    fill_header(&e->hdr, MAYFLY_EVENT_TCP, sizeof(*e), bpf_get_current_pid_tgid(), cgroup_id);
    e->skaddr = (u64)args->skaddr;
    e->oldstate = args->oldstate;
    e->newstate = args->newstate;
    e->sport = args->sport;
    e->dport = args->dport;
    e->family = args->family;
    e->protocol = args->protocol;
    __builtin_memset(e->saddr, 0, sizeof(e->saddr));
    __builtin_memset(e->daddr, 0, sizeof(e->daddr));
    if (args->family == AF_INET) {
        bpf_probe_read_kernel(e->saddr, 4, args->saddr);
        bpf_probe_read_kernel(e->daddr, 4, args->daddr);
    } else {
        bpf_probe_read_kernel(e->saddr, 16, args->saddr_v6);
        bpf_probe_read_kernel(e->daddr, 16, args->daddr_v6);
    }
    events.ringbuf_submit(e, wakeup_flags(cfg, 0));
    return 0;
}
#endif

/* Per-cgroup flow accounting, attached to the cgroup2 root (cgroup_skb sees the IP
 * header first), and network isolation. Lets every packet through but an isolated
 * cgroup's to destinations not allowed. It runs on every packet, so it reads
 * the headers in place (a helper call costs 20-40 ns here); bpf_skb_load_bytes is the
 * fallback for headers outside the linear part. */
static __always_inline int skb_header(struct __sk_buff *skb, u32 offset, void *to, u32 len)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    offset &= 0xff;  /* an IP header's length, bounded for the verifier */
    if (data + offset + len <= end) {
        __builtin_memcpy(to, data + offset, len);
        return 0;
    }
    return bpf_skb_load_bytes(skb, offset, to, len);
}

/* The packet's flow: its cgroup, the remote end's address and port, the local port, the
 * family and protocol. -1 for what is not IP, or cannot be read. */
static __always_inline int read_flow(struct __sk_buff *skb, int ingress, struct mayfly_flow_key *key)
{
    u32 l4 = 0;
    u8 proto = 0;

    key->cgroup_id = bpf_skb_cgroup_id(skb);
    if (skb->protocol == NTOHS(ETH_P_IP)) {
        struct iphdr ip;
        if (skb_header(skb, 0, &ip, sizeof(ip)))
            return -1;
        __builtin_memcpy(key->remote, ingress ? &ip.saddr : &ip.daddr, 4);
        key->family = AF_INET;
        proto = ip.protocol;
        l4 = ip.ihl * 4;
    } else if (skb->protocol == NTOHS(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (skb_header(skb, 0, &ip6, sizeof(ip6)))
            return -1;
        __builtin_memcpy(key->remote, ingress ? &ip6.saddr : &ip6.daddr, 16);
        key->family = AF_INET6;
        proto = ip6.nexthdr;
        l4 = sizeof(ip6);
    } else {
        return -1;
    }
    key->protocol = proto;
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        u16 ports[2];
        if (!skb_header(skb, l4, ports, sizeof(ports))) {
            key->remote_port = NTOHS(ingress ? ports[0] : ports[1]);
            key->local_port = NTOHS(ingress ? ports[1] : ports[0]);
        }
    }
    return 0;
}

static __always_inline void account_flow(struct __sk_buff *skb, struct mayfly_flow_key *key, int ingress)
{
    struct mayfly_flow_value *value = flows.lookup(key);
    if (!value) {
        struct mayfly_flow_value zero = {};
        flows.insert(key, &zero);
        value = flows.lookup(key);
        if (!value)
            return;
    }
    if (ingress) {
        __sync_fetch_and_add(&value->bytes_in, skb->len);
        __sync_fetch_and_add(&value->packets_in, 1);
    } else {
        __sync_fetch_and_add(&value->bytes_out, skb->len);
        __sync_fetch_and_add(&value->packets_out, 1);
    }
}

/* Whether an isolated cgroup's packet may pass: to or from an `isolate_allow` destination
 * (its port, or any port). Every other cgroup's passes after one array lookup. */
static __always_inline int passes(struct mayfly_flow_key *key, int readable)
{
    u32 zero = 0;
    u64 *count = isolating.lookup(&zero);
    if (!count || !*count || !isolated.lookup(&key->cgroup_id))
        return 1;
    if (!readable)
        return 0;
    struct mayfly_allow_key allow = {.port = key->remote_port, .family = key->family};
    allow.prefixlen = 32 + (key->family == AF_INET ? 32 : 128);
    __builtin_memcpy(allow.addr, key->remote, 16);
    if (allow.port && isolate_allow.lookup(&allow))
        return 1;
    allow.port = 0;
    return isolate_allow.lookup(&allow) != 0;
}

static __always_inline int flow(struct __sk_buff *skb, int ingress)
{
    struct mayfly_flow_key key = {};
    int readable = read_flow(skb, ingress, &key) == 0;
    if (readable)
        account_flow(skb, &key, ingress);
    return passes(&key, readable);
}

int flow_ingress(struct __sk_buff *skb)
{
    return flow(skb, 1);
}

int flow_egress(struct __sk_buff *skb)
{
    return flow(skb, 0);
}

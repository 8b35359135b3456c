/* The kernel/user-space contract: every record that crosses the ring buffer, and
 * every map value that user space writes or reads.
 *
 * This header is the single source of truth. sensor/kernel/layout.py parses it to build
 * the numpy dtypes, and tests/unit/test_layout.py checks every size and offset
 * against what the C compiler produces. Keep to the subset that parser reads:
 * `#define NAME <integer>` constants and structs of fixed-width fields
 * (__u8.. __u64, __s32, __s64, char[N], nested struct, arrays of them). No implicit
 * padding: every hole is an explicit `_pad*` field that the programs zero.
 *
 * Event structs are named mayfly_<kind>_event for kind MAYFLY_EVENT_<KIND>.
 * Bump MAYFLY_SCHEMA_VERSION on any change below; the loader compiles it into the
 * programs and checks it against the version user space was built for.
 */
#ifndef MAYFLY_EVENTS_H
#define MAYFLY_EVENTS_H

#define MAYFLY_SCHEMA_VERSION 8

#define MAYFLY_COMM_LEN 16
#define MAYFLY_STR_LEN 256          /* one data slot of a syscall event */
#define MAYFLY_STR_SLOTS 3
#define MAYFLY_DATA_LEN 768         /* MAYFLY_STR_SLOTS * MAYFLY_STR_LEN */
#define MAYFLY_ARGV_MAX 32          /* exec arguments read at most */
#define MAYFLY_MAX_SYSCALLS 512     /* syscall numbers the specs and counters cover */
#define MAYFLY_CGROUP_PATH_LEN 256

/* Event kinds (mayfly_event_header.kind). */
#define MAYFLY_EVENT_SYSCALL 1      /* a syscall with its arguments and result; exec too */
#define MAYFLY_EVENT_FORK 2         /* a new process (not a thread) */
#define MAYFLY_EVENT_EXIT 3         /* a process's last thread exited */
#define MAYFLY_EVENT_CGROUP 4       /* a cgroup2 directory was made or removed */
#define MAYFLY_EVENT_TCP 5          /* a TCP socket changed state */
#define MAYFLY_KINDS_MAX 8          /* kinds are below this */

/* How a syscall argument is read into a data slot (mayfly_slot_spec.read). */
#define MAYFLY_READ_NONE 0
#define MAYFLY_READ_STR 1           /* NUL-terminated user string at args[arg] */
#define MAYFLY_READ_BYTES 2         /* args[len_arg] bytes (at most a slot) at args[arg] */
#define MAYFLY_READ_BYTES_OUT 3     /* *(int *)args[len_arg] bytes at args[arg], read at exit */
#define MAYFLY_READ_FIXED 4         /* `len` bytes at args[arg] */
#define MAYFLY_READ_ARGV 5          /* the strings of the array at args[arg], NUL-separated;
                                     * only in slot 1, and fills slots 1 and 2 */
#define MAYFLY_READ_FIXED_OUT 6     /* `len` bytes at args[arg], written by the kernel: read at exit */

/* mayfly_syscall_event.flags */
#define MAYFLY_SYSCALL_COMPAT 1     /* exec of a 32-bit (ia32) image */
#define MAYFLY_SYSCALL_NO_RESULT 2  /* sent at enter (MAYFLY_SPEC_AT_ENTER): `result` is unknown */
#define MAYFLY_SYSCALL_NEEDLE 4     /* its path is a needle's: sent past an empty bucket, spilled if need be */
#define MAYFLY_SYSCALL_STOPPED 8    /* a stopping needle's: the kernel stopped its process (SIGSTOP) at it */
#define MAYFLY_SYSCALL_GATED 16     /* an exec the spawn gate holds: its process stopped before its first instruction */
#define MAYFLY_SYSCALL_KILLED 32    /* the kernel killed its process (SIGKILL) at it: a denied cgroup's exec, a killing needle */

/* mayfly_syscall_spec.flags */
#define MAYFLY_SPEC_EMIT 1          /* capture this syscall */
#define MAYFLY_SPEC_TRACK_RESULT 2  /* a result >= 0 is a new fd: track it */
#define MAYFLY_SPEC_TRACKED_FD0 4   /* emit only when args[0] is a tracked fd... */
#define MAYFLY_SPEC_STDIO_FD1 8     /* ...or when args[1] is 0, 1 or 2 (dup2/dup3 onto stdio) */
#define MAYFLY_SPEC_UNTRACK_FD0 16  /* args[0] stops being an fd (close) */
#define MAYFLY_SPEC_DUPFD_CMD 32    /* fcntl: only F_DUPFD and F_DUPFD_CLOEXEC in args[1] */
#define MAYFLY_SPEC_EXIT_CODE 64    /* exit/exit_group: keep args[0] as the exit code, emit nothing */
#define MAYFLY_SPEC_TRACK_PAIR 128  /* on success, the two ints read into slot 0 are new fds (pipe) */
#define MAYFLY_SPEC_AT_ENTER 256    /* no exit tracepoint is attached for it: send at enter */
#define MAYFLY_SPEC_NEEDLE 512      /* `needles` has entries for it: look its slot 0 path up there */
#define MAYFLY_SPEC_LIFECYCLE 1024  /* an exec: never asks the token bucket */
#define MAYFLY_SPEC_STOP 2048       /* some of its needles stop: look every event's path up (not the host's) */
#define MAYFLY_SPEC_OPEN_WRITES 4096 /* it opens for writing whatever its flags (creat) */

/* The token buckets are work-conserving: an empty one holds a cgroup back only while
 * the ring is under pressure, which lasts this long after it was last seen (by user
 * space, from the backlog at a drain; by the programs, when the ring was full). The
 * `pressure` array holds until when, in bpf_ktime_get_ns() time (~0: always). */
#define MAYFLY_PRESSURE_HOLD_NS 100000000

/* `needles` LPM trie: events that can match a rule of priority WARNING or above, as
 * the kernel can tell them: a syscall and its slot 0 path, exactly (the entry ends
 * with the NUL) or by prefix. The prefix covers `nr` (32 bits) and the path's bytes.
 * A flood cannot hide them: they pass an empty token bucket and spill when the ring
 * is full. */
#define MAYFLY_NEEDLE_LEN 128
#define MAYFLY_MAX_NEEDLES 4096
/* A needle's value: bits. A stopping needle is a capture trigger's whose process must be
 * held for its capture (its last act): the kernel stops the process with SIGSTOP at the
 * syscall, before it returns to user space, and user space continues or kills it. */
#define MAYFLY_NEEDLE_FLOOD 1       /* a flood cannot hide it */
#define MAYFLY_NEEDLE_STOP_READ 2   /* stop the process at it when the open reads (in a container: */
#define MAYFLY_NEEDLE_STOP_WRITE 4  /* ... not in `host_cgroups`), or writes; an open whose flags are
                                     * in no register (open_flags_arg 0) stops at either */
#define MAYFLY_NEEDLE_KILL 8        /* kill the process at it (SIGKILL) where it would stop: an in-kernel kill */
#define MAYFLY_MAX_STOPPED 1024     /* `stopped_tasks`: processes stopped and not yet let go */
/* `stop_comms` hash: process names (comm, as the exec leaves it) whose exec in a container
 * stops the process before its first instruction (capture triggers on proc.name; their
 * exec syscalls carry MAYFLY_SPEC_STOP). An exec also stops at a stopping needle on its
 * file name (a trigger on proc.exe). */
#define MAYFLY_MAX_STOP_COMMS 1024
struct mayfly_comm_key {
    char comm[MAYFLY_COMM_LEN];
};
struct mayfly_needle_key {
    __u32 prefixlen;
    __u32 nr;
    __u8 path[MAYFLY_NEEDLE_LEN];
};

/* The spawn gate. While `gate` (one u32) is set, the first exec in a cgroup that is not
 * the host's and has no `verdicts` entry stops its process (SIGSTOP) before its first
 * instruction, and the cgroup's verdict becomes pending; so does every exec there while
 * it is pending. An exec in a denied cgroup is killed (SIGKILL). Each process held is in
 * `gated_tasks` (pinned in bpffs, so that a sensor started after a crash finds and
 * releases what an earlier one held) until user space lets it go. */
#define MAYFLY_VERDICT_PENDING 1
#define MAYFLY_VERDICT_ALLOW 2
#define MAYFLY_VERDICT_DENY 3
#define MAYFLY_MAX_GATED 4096
struct mayfly_gate_hold {
    __u64 cgroup_id;
    __u64 since_ns;      /* bpf_ktime_get_ns() when it was held */
};

/* Network isolation, in the cgroup_skb programs: a cgroup in `isolated` sends and
 * receives only to and from the `isolate_allow` trie's destinations (an address prefix,
 * and a port or 0 for any). `isolating` (one u64) counts the cgroups isolated, so that
 * no other packet pays a hash lookup. */
#define MAYFLY_MAX_ISOLATED 1024
#define MAYFLY_MAX_ALLOWED 256
struct mayfly_allow_key {
    __u32 prefixlen;     /* bits from `port` on: 32 (port, family, pad) + the address prefix */
    __u16 port;          /* host byte order; 0: any port */
    __u8 family;         /* AF_INET or AF_INET6 */
    __u8 _pad0;
    __u8 addr[16];       /* AF_INET: the first 4 bytes */
};

/* `cgroup_policy` values */
#define MAYFLY_POLICY_TRACK 0
#define MAYFLY_POLICY_IGNORE 1

/* mayfly_cgroup_event.op */
#define MAYFLY_CGROUP_MKDIR 1
#define MAYFLY_CGROUP_RMDIR 2

/* Indices of the per-CPU `stats` array: what was lost, and why. */
#define MAYFLY_STAT_RING_FULL 0     /* no room in the ring buffer */
#define MAYFLY_STAT_PENDING_FULL 1  /* no room to hold a syscall between enter and exit */
#define MAYFLY_STAT_RATE_LIMITED 2  /* a cgroup's token bucket was empty */
#define MAYFLY_STAT_COMPAT 3        /* an ia32 syscall whose number a captured one shares: not decoded */
#define MAYFLY_STAT_COUNT 4
/* The `ring_lost` per-CPU array: ring-full losses by kind, and by syscall number for
 * syscall events at MAYFLY_KINDS_MAX + nr. */
#define MAYFLY_RING_LOST_SLOTS 520  /* MAYFLY_KINDS_MAX + MAYFLY_MAX_SYSCALLS */

struct mayfly_event_header {
    __u16 kind;
    __u16 size;          /* bytes of the record as sent; the tail may be cut */
    __u32 _pad0;
    __u64 ktime_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u64 cgroup_id;     /* cgroup2 id: inode of the cgroup's directory */
    __u32 pid;           /* tgid */
    __u32 tid;
    __u32 ppid;          /* parent tgid, 0 when unknown */
    __u32 uid;
    __u32 gid;
    __u32 _pad1;
    char comm[MAYFLY_COMM_LEN];
};

/* Sent with only the slots in use (header.size), the rest cut. */
struct mayfly_syscall_event {
    struct mayfly_event_header hdr;
    __u32 nr;
    __u16 truncated;     /* bit i: slot i's data was cut to fit */
    __u16 flags;         /* MAYFLY_SYSCALL_* */
    __u16 slot_len[MAYFLY_STR_SLOTS];  /* bytes read into each slot */
    __u16 _pad1;
    __s64 result;        /* return value; -errno on failure */
    __u64 args[6];       /* raw argument registers */
    __u8 data[MAYFLY_DATA_LEN];        /* slot i at i * MAYFLY_STR_LEN */
};

struct mayfly_fork_event {
    struct mayfly_event_header hdr;  /* the parent */
    __u32 child_pid;
    __u32 _pad0;
    __u64 clone_flags;
};

struct mayfly_exit_event {
    struct mayfly_event_header hdr;
    __s32 exit_code;     /* from exit_group/exit; -1 when the process was killed */
    __s32 signal;        /* the fatal signal, 0 when none */
};

struct mayfly_cgroup_event {
    struct mayfly_event_header hdr;  /* the task that made or removed it */
    __u64 id;
    __u32 op;
    __s32 level;
    char path[MAYFLY_CGROUP_PATH_LEN];
};

/* The task in the header is the one running when the state changed: for changes
 * driven by incoming packets that is unrelated to the socket's owner. */
struct mayfly_tcp_event {
    struct mayfly_event_header hdr;
    __u64 skaddr;        /* the socket, to relate successive changes */
    __s32 oldstate;
    __s32 newstate;
    __u16 sport;
    __u16 dport;
    __u16 family;
    __u16 protocol;
    __u8 saddr[16];      /* AF_INET: the first 4 bytes */
    __u8 daddr[16];
};

/* How to capture one syscall: `syscall_specs` array, index = syscall number. */
struct mayfly_slot_spec {
    __u8 read;
    __u8 arg;
    __u8 len_arg;
    __u8 _pad0;
    __u16 len;
    __u16 _pad1;
};

struct mayfly_syscall_spec {
    __u32 flags;
    __u32 open_flags_arg;   /* an open's flags are args[this] (0: in no register), for MAYFLY_NEEDLE_STOP_* */
    struct mayfly_slot_spec slot[MAYFLY_STR_SLOTS];
};

/* `config` array, one entry, written by user space before anything else. */
struct mayfly_config {
    __u32 self_tgid;     /* the sensor itself: never traced */
    __u32 wakeup_every;  /* wake user space every N records per CPU (and at once for lifecycle) */
    __u64 cost_ns;       /* token bucket: credit one event costs (1e9 / rate); 0: no limit */
    __u64 burst_ns;      /* token bucket depth, as credit */
};

/* `cgroup_state` hash, key = cgroup id. */
struct mayfly_cgroup_state {
    __u64 credit_ns;     /* token bucket */
    __u64 refill_ns;     /* when credit was last added */
    __u64 rate_limited;  /* events the bucket suppressed */
    __u64 ring_lost;     /* events lost to a full ring buffer */
};

/* `syscall_counts` per-CPU array: one row of counters per counted cgroup, every syscall
 * it makes. A cgroup's row (its slot, in `count_slots`) is handed out by the kernel from
 * the `free_count_slots` queue and given back by user space once the cgroup is gone and
 * reported. Slot 0 counts cgroups that found no free slot. The counters wrap at 2^32:
 * user space reads them far more often than that. */
#define MAYFLY_COUNT_OVERFLOW_SLOT 0
struct mayfly_count_row {
    __u32 n[MAYFLY_MAX_SYSCALLS];
};

/* `tracked_fds` hash: the fds user space keeps a table of. */
struct mayfly_fd_key {
    __u32 tgid;
    __s32 fd;
};

/* `flows` hash, filled by the cgroup_skb programs. */
struct mayfly_flow_key {
    __u64 cgroup_id;
    __u8 remote[16];     /* AF_INET: the first 4 bytes */
    __u16 remote_port;   /* host byte order */
    __u16 local_port;
    __u8 family;         /* AF_INET or AF_INET6 */
    __u8 protocol;       /* IPPROTO_* */
    __u16 _pad0;
};

struct mayfly_flow_value {
    __u64 bytes_in;
    __u64 bytes_out;
    __u64 packets_in;
    __u64 packets_out;
};

#endif

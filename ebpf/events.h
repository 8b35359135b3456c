/* The kernel/user-space contract: every record that crosses the ring buffer.
 *
 * This header is the single source of truth. sensor/layout.py parses it to build
 * the numpy dtypes, and tests/unit/test_layout.py checks every size and offset
 * against what the C compiler produces. Keep to the subset that parser reads:
 * `#define NAME <integer>` constants and structs of fixed-width fields
 * (__u8.. __u64, __s32, __s64, char[N], nested struct). No implicit padding:
 * every hole is an explicit `_pad*` field that the programs zero.
 *
 * Bump MAYFLY_SCHEMA_VERSION on any change to a struct below.
 */
#ifndef MAYFLY_EVENTS_H
#define MAYFLY_EVENTS_H

#define MAYFLY_SCHEMA_VERSION 1

#define MAYFLY_COMM_LEN 16
#define MAYFLY_PATH_LEN 256

/* Event kinds (mayfly_event_header.kind). */
#define MAYFLY_EVENT_EXEC 1

/* Counters in the `stats` array map. */
#define MAYFLY_STAT_RINGBUF_FULL 0
#define MAYFLY_STAT_COUNT 1

struct mayfly_event_header {
    __u16 kind;
    __u16 size;          /* whole record, header included */
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

struct mayfly_exec_event {
    struct mayfly_event_header hdr;
    __u32 old_pid;       /* the exec'ing thread's tid before exec */
    __u32 _pad0;
    char filename[MAYFLY_PATH_LEN];
};

#endif

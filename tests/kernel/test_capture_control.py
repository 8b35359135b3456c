"""What the kernel side lets through: interest, self-exclusion, per-cgroup policy and
token buckets, loss accounting, and the per-cgroup syscall counters."""

import os
import subprocess
import sys
import uuid

from capture import collect, drain, events, own_cgroup, run_in_cgroup

from sensor import ProgramConfig, Sensor
from sensor.system import host
from sensor.testing.containers import wait_until

N = 97  # prime


def test_exact_events_from_a_process_in_its_own_cgroup(sensor, fire):
    with own_cgroup() as (path, cgroup_id):
        assert run_in_cgroup(path, [fire, "openat", str(N)]).returncode == 0
        mine = collect(sensor, cgroup_id)
    assert [r["evt"]["type"] for r in events(mine)] == ["execve"] + ["openat", "close"] * N + ["procexit"]


def test_uninteresting_syscalls_are_not_captured(sensor, fire):
    try:
        sensor.set_capture(["openat"])
        with own_cgroup() as (path, cgroup_id):
            run_in_cgroup(path, [fire, "mkdir", "5"])
            run_in_cgroup(path, [fire, "openat", "5"])
            mine = events(collect(sensor, cgroup_id))
        assert {r["evt"]["type"] for r in mine} == {"execve", "openat", "procexit"}
        assert len(events(mine, "openat")) == 5
    finally:
        sensor.set_capture(None)


def test_the_sensor_never_sees_itself(sensor):
    with open("/etc/hostname"):
        pass
    child = subprocess.run(["/bin/cat", "/etc/hostname"], capture_output=True)
    drain(sensor)
    opened = [r for r in events(sensor.seen, "openat") if r["evt"]["name"] == "/etc/hostname"]
    sensor.seen.clear()
    assert child.returncode == 0
    assert [r["proc"]["comm"] for r in opened] == ["cat"]  # the child's open is seen, the sensor's own is not
    assert os.getpid() not in {r["proc"]["pid"] for r in opened}


def test_an_ignored_cgroup_sends_nothing_but_is_still_counted(sensor, fire):
    with own_cgroup() as (path, cgroup_id):
        sensor.set_policy(cgroup_id, track=False)
        try:
            run_in_cgroup(path, [fire, "getppid", str(N)])
            quiet = collect(sensor, cgroup_id)
            counts = [r for r in sensor.report() if r["kind"] == "syscall_counts"
                      and r.get("container", {}).get("cgroup_id") == cgroup_id]
        finally:
            sensor.set_policy(cgroup_id, track=True)
    assert events(quiet) == []
    assert counts[0]["counts"]["getppid"] == N


def test_syscall_counts_per_cgroup_are_exact(sensor, fire):
    sensor.report()  # start a fresh interval
    with own_cgroup() as (path, cgroup_id):
        run_in_cgroup(path, [fire, "getppid", str(N)])
        drain(sensor)
        (record,) = [r for r in sensor.report() if r["kind"] == "syscall_counts"
                     and r.get("container", {}).get("cgroup_id") == cgroup_id]
    assert record["counts"]["getppid"] == N
    assert record["counts"]["execve"] == 1 and record["counts"]["exit_group"] == 1
    assert record["interval_s"] > 0


def test_counts_follow_a_process_that_moves_between_cgroups(sensor):
    """The kernel caches each CPU's last task and its counter row; a move to another
    cgroup must take effect from the next syscall, back and forth."""
    sensor.report()
    with own_cgroup() as (first, first_id), own_cgroup() as (second, second_id):
        mover = ("import os, sys\n"
                 "def move(path):\n"
                 "    with open(os.path.join(path, 'cgroup.procs'), 'w') as f: f.write(str(os.getpid()))\n"
                 "for path, n in ((sys.argv[1], 7), (sys.argv[2], 11), (sys.argv[1], 13)):\n"
                 "    move(path)\n"
                 "    for _ in range(n): os.getppid()\n"
                 "move(sys.argv[3])\n")
        subprocess.run([sys.executable, "-c", mover, first, second, host.cgroup2_root()], check=True)
        drain(sensor)
        counts = {r["container"]["cgroup_id"]: r["counts"] for r in sensor.report()
                  if r["kind"] == "syscall_counts" and "container" in r}
    assert counts[first_id]["getppid"] == 7 + 13
    assert counts[second_id]["getppid"] == 11


def test_a_flooding_cgroup_is_limited_and_the_others_are_not(sensor, fire):
    flood, calm = 2003, 7
    try:
        sensor.set_rate_limit(1000, 50, pressure=0)  # held back at once, as under a full ring
        with own_cgroup() as (noisy_path, noisy), own_cgroup() as (calm_path, quiet):
            run_in_cgroup(noisy_path, [fire, "getppid", "1", "0"])  # warm the page cache
            drain(sensor)
            sensor.seen.clear()
            run_in_cgroup(noisy_path, [fire, "openat", str(flood)])
            run_in_cgroup(calm_path, [fire, "openat", str(calm)])
            drain(sensor)
            records = list(sensor.seen)
            sensor.seen.clear()
    finally:
        sensor.set_rate_limit(0, 1)
    noisy_events = [r for r in events(records) if r["container"]["cgroup_id"] == noisy]
    calm_events = [r for r in events(records) if r["container"]["cgroup_id"] == quiet]
    limited = losses(records, "rate_limited", noisy)
    assert len(calm_events) == 2 * calm + 2  # exec, openat+close each, exit
    assert 0 < len(noisy_events) < 2 * flood
    # Every open asks the bucket once; a close only follows an open that got through (a
    # limited open leaves no fd to track). The exec and the exit never ask it: they arrive.
    opens = len([r for r in noisy_events if r["evt"]["type"] == "openat"])
    assert len(noisy_events) + limited == 1 + flood + opens + 1
    assert [r["evt"]["type"] for r in noisy_events if r["evt"]["type"] in ("execve", "procexit")] == \
        ["execve", "procexit"]


def test_a_lone_busy_cgroup_is_not_held_back_while_the_ring_has_room(sensor, fire):
    """The buckets are work-conserving: over its rate, a cgroup is held back only while
    the ring buffer is under pressure (a quarter full by default)."""
    flood = 2003
    try:
        sensor.set_rate_limit(1000, 50)
        with own_cgroup() as (path, cgroup_id):
            run_in_cgroup(path, [fire, "openat", str(flood)])
            records = collect(sensor, cgroup_id)
            limited = sensor.reports.cgroup_losses(cgroup_id)["rate_limited"]
    finally:
        sensor.set_rate_limit(0, 1)
    assert len(events(records, "openat")) == flood and len(events(records, "close")) == flood
    assert limited == 0


def losses(records, reason, cgroup_id):
    return sum(c["count"] for r in records if r["kind"] == "lost" and r["reason"] == reason
               for c in r.get("cgroups", []) if c["container"]["cgroup_id"] == cgroup_id)


def test_a_full_ring_puts_it_under_pressure_and_buckets_engage(fire):
    """Nobody drains a small ring while a cgroup floods it: once it is full, the
    programs mark it under pressure, and the flooder's empty bucket holds it back (its
    events are then rate_limited, not ring_full)."""
    seen = []
    with Sensor(config=ProgramConfig(ringbuf_pages=16, cgroup_rate=1000, cgroup_burst=50, flows=False), rules=[],
                emit_events=["openat"], on_record=seen.append, lost_interval=0) as small:
        with own_cgroup() as (path, cgroup_id):
            run_in_cgroup(path, [fire, "openat", "20011"])
            drain(small)
    ring_full, limited = losses(seen, "ring_full", cgroup_id), losses(seen, "rate_limited", cgroup_id)
    delivered = len([r for r in events(seen, "openat") if r["container"]["cgroup_id"] == cgroup_id])
    assert ring_full > 0 and limited > 0
    assert delivered + ring_full + limited == 20011


def test_a_backlog_seen_at_a_drain_puts_the_ring_under_pressure(fire):
    """A quarter of the ring unread at a drain: the flood that follows at once is held
    back by its empty bucket, before the ring is anywhere near full. (The drain is the
    kernel side's own, so that the pipeline's time does not eat into the hold.)"""
    with Sensor(config=ProgramConfig(ringbuf_pages=64, cgroup_rate=1000, cgroup_burst=50, flows=False), rules=[],
                emit_events=["openat"]) as small:
        with own_cgroup() as (path, cgroup_id):
            run_in_cgroup(path, [fire, "openat", "503"])  # ~200 KiB: more than a quarter of 256 KiB
            assert small.kernel.ring.pending() >= small.kernel.ring.size // 4
            small.kernel.drain()
            run_in_cgroup(path, [fire, "openat", "503"])
            counted = small.reports.cgroup_losses(cgroup_id)
    assert counted["ring_full"] == 0 and counted["rate_limited"] > 0


def test_a_full_ring_buffer_loses_nothing_unaccounted(fire):
    """Delivered + counted lost = generated, for a cgroup that floods a one-page ring."""
    seen = []
    with Sensor(config=ProgramConfig(ringbuf_pages=1, cgroup_rate=0, flows=False), rules=[],  # what it emits only
                emit_events=["openat", "execve", "procexit"], on_record=seen.append, lost_interval=0) as small:
        with own_cgroup() as (path, cgroup_id):
            run_in_cgroup(path, [fire, "openat", str(N * 10)])  # nothing polls meanwhile
            drain(small)
    delivered = [r for r in events(seen) if r["container"]["cgroup_id"] == cgroup_id]
    lost = [r for r in seen if r["kind"] == "lost" and r["reason"] == "ring_full"]
    lost_here = sum(c["count"] for r in lost for c in r.get("cgroups", []) if c["container"]["cgroup_id"] == cgroup_id)
    assert 0 < len(delivered) < N * 10
    assert len(delivered) + lost_here == 1 + N * 10 + 1  # exec, the opens, exit
    assert lost and all(r["types"] for r in lost)



def test_lifecycle_events_outlive_a_full_ring_buffer(fire):
    """One cgroup floods a one-page ring while nothing polls; another cgroup made, used
    and removed meanwhile keeps its whole lifecycle (its creation and removal, its
    process's exec and exit): those go to the spill ring, and only the flood loses."""
    seen = []
    types = ["openat", "execve", "procexit", "cgroup_mkdir", "cgroup_rmdir"]
    with Sensor(config=ProgramConfig(ringbuf_pages=1, cgroup_rate=0, flows=False), rules=[],
                emit_events=types, on_record=seen.append, lost_interval=0) as small:
        with own_cgroup() as (flood, flood_id):
            run_in_cgroup(flood, [fire, "openat", str(N * 10)])  # fills the ring
            path = os.path.join(host.cgroup2_root(), f"mayfly-test-{uuid.uuid4().hex[:8]}")
            subprocess.run(["/bin/mkdir", path], check=True)  # another process: the sensor's own are not seen
            cgroup_id = host.cgroup_id(path)
            try:
                run_in_cgroup(path, [fire, "getppid", "1"])
            finally:
                subprocess.run(["/bin/rmdir", path], check=True)
            drain(small)
    lost = [r for r in seen if r["kind"] == "lost" and r["reason"] == "ring_full"]
    assert lost and set().union(*(r["types"] for r in lost)) == {"openat"}  # only the flood's
    # The flood's own records are whole beside the spilled ones: delivered + lost = made.
    flooded = [r for r in events(seen) if r["container"]["cgroup_id"] == flood_id]
    lost_there = sum(c["count"] for r in lost for c in r["cgroups"] if c["container"]["cgroup_id"] == flood_id)
    assert len(flooded) + lost_there == 1 + N * 10 + 1  # exec, the opens, exit
    assert {r["evt"]["name"] for r in flooded if r["evt"]["type"] == "openat"} == {"/tmp/f-openat"}
    mine = [r for r in events(seen) if r["container"]["cgroup_id"] == cgroup_id]
    assert [r["evt"]["type"] for r in mine] == ["execve", "procexit"]
    made = [r for r in events(seen) if r["evt"]["type"] in ("cgroup_mkdir", "cgroup_rmdir")
            and r["evt"]["id"] == cgroup_id]
    assert [r["evt"]["type"] for r in made] == ["cgroup_mkdir", "cgroup_rmdir"]


THREADS_SCRIPT = """
import socket, threading
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
accepted = []
waiter = threading.Thread(target=lambda: accepted.append(server.accept()))
waiter.start()
for _ in range(%d):
    open("/etc/hostname").close()
socket.create_connection(server.getsockname()).close()
waiter.join()
""" % N


def test_threads_sharing_a_pending_slot_lose_nothing(tmp_path):
    """With one slot, a thread blocked in accept holds it while another thread's
    opens go through the hash: every event arrives whole."""
    import sys
    seen = []
    with Sensor(config=ProgramConfig(pending_slots=1, cgroup_rate=0, flows=False), rules=[],
                emit_events=["accept", "accept4", "openat"], on_record=seen.append,
                lost_interval=0) as small:
        with own_cgroup() as (path, cgroup_id):
            assert run_in_cgroup(path, [sys.executable, "-c", THREADS_SCRIPT]).returncode == 0
            drain(small)
    mine = [r["evt"] for r in events(seen) if r["container"]["cgroup_id"] == cgroup_id]
    accepts = [e for e in mine if e["type"] in ("accept", "accept4")]
    assert len(accepts) == 1 and accepts[0]["res"] >= 3 and accepts[0]["addr"]["addr"] == "127.0.0.1"
    assert len([e for e in mine if e["type"] == "openat" and e["name"] == "/etc/hostname"]) == N
    assert not [r for r in seen if r["kind"] == "lost"]


def test_counter_slots_are_recycled_and_overflow_is_counted(fire):
    """Eight counter rows (one for overflow): twenty cgroups in turn each get exact
    counts, because a gone cgroup's row comes back once reported; then ten cgroups at
    once, more than the rows, lose no count: what found no row is unattributed. (The
    cgroups are made and removed by a child: the sensor does not see its own process.)"""
    def make(n):
        paths = [os.path.join(host.cgroup2_root(), f"mayfly-test-{uuid.uuid4().hex[:8]}") for _ in range(n)]
        subprocess.run(["mkdir", *paths], check=True)
        return paths

    with Sensor(config=ProgramConfig(count_slots=8, cgroup_rate=0, flows=False), rules=[],
                report_interval=3600) as small:
        small.report()
        for _ in range(20):
            (path,) = make(1)
            run_in_cgroup(path, [fire, "getppid", str(N)])
            cgroup_id = host.cgroup_id(path)
            subprocess.run(["/bin/rmdir", path], check=True)
            drain(small)  # the rmdir: the row is given back after the next report
            (record,) = [r for r in small.report() if r.get("container", {}).get("cgroup_id") == cgroup_id]
            assert record["counts"]["getppid"] == N
        paths = make(10)
        try:
            ids = {host.cgroup_id(path) for path in paths}
            for path in paths:
                run_in_cgroup(path, [fire, "getppid", str(N)])
            drain(small)
            reported = small.report()
        finally:
            subprocess.run(["rmdir", *paths], check=True)
    attributed = [r for r in reported if r.get("container", {}).get("cgroup_id") in ids]
    unattributed = [r for r in reported if r.get("unattributed")]
    assert 0 < len(attributed) < 10 and len(unattributed) == 1
    assert all(r["counts"]["getppid"] == N for r in attributed)
    assert unattributed[0]["counts"]["getppid"] >= (10 - len(attributed)) * N


def test_with_only_container_rules_the_host_sends_nothing_but_is_counted(tmp_path, fire):
    rules = tmp_path / "rules.yaml"
    rules.write_text("- rule: In a container\n  desc: d\n  output: o\n  priority: INFO\n"
                     "  condition: evt.type = openat and container.id != host\n")
    seen = []
    path = os.path.join(host.cgroup2_root(), f"mayfly-test-{uuid.uuid4().hex[:8]}.slice")  # a systemd unit's
    with Sensor(config=ProgramConfig(cgroup_rate=0, flows=False), rules=[rules], on_record=seen.append,
                report_interval=3600) as only:
        subprocess.run(["mkdir", path], check=True)  # by another process: the sensor does not see its own doings
        try:
            cgroup_id = host.cgroup_id(path)
            wait_until(lambda: only.poll(0) is not None and cgroup_id in only._identify.ignored_hosts)  # known as the host's
            run_in_cgroup(path, [fire, "openat", str(N)])
            drain(only)
            counts = [r for r in only.report() if r["kind"] == "syscall_counts"
                      and r.get("container", {}).get("cgroup_id") == cgroup_id]
        finally:
            os.rmdir(path)
        assert only._identify.containers_only
        delivered = only._account.delivered["syscall"]
    assert counts[0]["counts"]["openat"] >= N
    assert delivered < N  # the host's opens never left the kernel

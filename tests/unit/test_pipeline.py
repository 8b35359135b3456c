"""The whole sensor, its pipeline of stages, run without root: raw ring-buffer batches
go in through a fake kernel side (sensor.testing.kernel.FakeKernel, the one part that
needs BPF and root), and everything above it runs for real."""

import socket

import numba.core.event
import pytest

from sensor import CallbackSink, Sensor
from sensor.testing.events import TABLE, C, batch_of, inet, raw, syscall
from sensor.testing.kernel import FakeKernel

CGROUP = 987_654_321
PATH = b"/mayfly-unit-pipeline".ljust(256, b"\0")


@pytest.fixture
def rule_file(tmp_path):
    path = tmp_path / "marker.yaml"
    path.write_text("- rule: Shadow read\n"
                    "  desc: a marker\n"
                    "  condition: evt.type in (open, openat, openat2) and fd.name = /etc/shadow\n"
                    "  output: shadow opened by %proc.name\n"
                    "  priority: WARNING\n")
    return path


def run(sensor: Sensor, *batches, polls: int = 3) -> list:
    got = []
    sensor.sinks.append(CallbackSink(got.append))
    with sensor:
        for batch in batches:
            sensor.kernel.feed(batch)
        for _ in range(len(batches) + polls):
            sensor.poll(0)
    return got


def test_a_batch_goes_through_every_stage_in_order_and_alerts(rule_file):
    sensor = Sensor(rules=[rule_file], kernel=FakeKernel, identity_deadline=0)
    opens = [syscall("openat", 3, pid=500, ktime=2_000_000 + k, dirfd=-100, flags=0,
                     name="/etc/shadow" if k % 7 == 3 else f"/usr/lib/x{k}.so", header={"cgroup_id": CGROUP})
             for k in range(29)]  # prime: a doubled or missed alert shows
    got = run(sensor, batch_of(raw("cgroup", id=CGROUP, op=C["MAYFLY_CGROUP_MKDIR"], level=1, path=PATH,
                                   ktime=1_000_000)), batch_of(*opens))
    assert sensor.pipeline is None  # closed
    alerts = [r for r in got if r["kind"] == "alert"]
    assert len(alerts) == 4 and {a["rule"] for a in alerts} == {"Shadow read"}
    assert {a["container"]["id"] for a in alerts} == {"mayfly-unit-pipeline"}
    assert [a["evt"]["name"] for a in alerts] == ["/etc/shadow"] * 4
    assert not [r for r in got if r["kind"] == "event"]  # none asked for...
    recorded = sensor.recorder.events(CGROUP)["syscall"]  # ...and the flight recorder has every one
    assert sorted(t for rows in recorded for t in rows["hdr"]["ktime_ns"].tolist()) == \
        [2_000_000 + k for k in range(29)]
    stopped = got[-1]
    assert stopped["kind"] == "sensor" and stopped["state"] == "stopped"
    assert list(stopped["stages_s"]) == ["drain", "decode", "identity", "recorder", "events", "accounting", "detect",
                                         "respond", "outputs"]
    assert stopped["events"] == {"cgroup": 1, "syscall": 29}
    assert stopped["sinks"]["callback:list.append"] == {"failures": 0, "dropped": 0, "backlog": 0}


def test_events_are_emitted_by_type_and_the_rules_see_them_from_rows(rule_file):
    sensor = Sensor(rules=[rule_file], kernel=FakeKernel, emit_events=["close"], identity_deadline=0)
    got = run(sensor, batch_of(syscall("openat", 3, ktime=1, dirfd=-100, flags=0, name="/etc/shadow"),
                               syscall("close", 0, ktime=2, fd=3)))
    assert [r["evt"]["type"] for r in got if r["kind"] == "event"] == ["close"]
    assert [r["rule"] for r in got if r["kind"] == "alert"] == ["Shadow read"]
    assert "openat" in sensor.kernel.captured and "close" in sensor.kernel.captured


def test_losses_are_aggregated_per_reason_and_none_is_counted_less(rule_file):
    clock = [100.0]
    sensor = Sensor(rules=[rule_file], kernel=FakeKernel, identity_deadline=0)
    got = []
    sensor.sinks.append(CallbackSink(got.append))
    openat = TABLE.numbers["openat"]
    reads = []
    with sensor:
        sensor.reports.monotonic = lambda: clock[0]
        counters = sensor.kernel.per_cpu_sums
        sensor.kernel.per_cpu_sums = lambda name: reads.append(name) or counters(name)
        for poll in range(250):  # 2.5 s of polls, every 10 ms, each with losses
            sensor.kernel.lose("RING_FULL", 7, cgroup_id=CGROUP, nr=openat)
            sensor.kernel.lose("RATE_LIMITED", 3, cgroup_id=CGROUP + 1)
            sensor.poll(0)
            clock[0] += 0.01
    lost = [r for r in got if r["kind"] == "lost"]
    by_reason = {reason: [r for r in lost if r["reason"] == reason] for reason in ("ring_full", "rate_limited")}
    # One when losses start, one a second after, and the rest at the stop.
    assert [len(records) for records in by_reason.values()] == [4, 4]
    assert sum(r["count"] for r in by_reason["ring_full"]) == 250 * 7
    assert sum(r["count"] for r in by_reason["rate_limited"]) == 250 * 3
    assert sum(r["types"]["openat"] for r in by_reason["ring_full"]) == 250 * 7
    assert sum(c["count"] for r in by_reason["ring_full"] for c in r["cgroups"]) == 250 * 7
    assert sum(c["count"] for r in by_reason["rate_limited"] for c in r["cgroups"]) == 250 * 3
    assert got[-1]["lost"] == {"ring_full": 250 * 7, "rate_limited": 250 * 3}
    # The kernel's counters are read when a record may be due, not at each of the 250 polls.
    assert reads.count("stats") == 4


class FailingSink:
    """A sink whose device fails (ENOSPC) for its first `failures` flushes."""

    def __init__(self, failures: int):
        self.failures = failures
        self.pending, self.records = [], []

    def write(self, record):
        self.pending.append(record)

    def flush(self):
        if self.failures:
            self.failures -= 1
            self.pending = []  # a sink that fails takes none of what it was given
            raise OSError(28, "No space left on device")
        self.records += self.pending
        self.pending = []

    def close(self):
        pass


def test_a_failing_sink_stops_neither_the_sensor_nor_the_others_and_catches_up(rule_file):
    failing = FailingSink(failures=2)
    healthy = []
    sensor = Sensor(rules=[rule_file], sinks=[failing, CallbackSink(healthy.append)], kernel=FakeKernel,
                    identity_deadline=0)
    run(sensor, *[batch_of(syscall("openat", 3, ktime=k, dirfd=-100, flags=0, name="/etc/shadow"))
                  for k in range(1, 6)])
    assert len([r for r in healthy if r["kind"] == "alert"]) == 5
    assert failing.records == healthy  # the same records, in order, none twice
    assert healthy[-1]["sinks"][str(failing)] == {"failures": 2, "dropped": 0, "backlog": 0}


def test_a_sink_that_cannot_keep_up_loses_only_what_it_reports(rule_file):
    failing = FailingSink(failures=10**9)
    healthy = []
    sensor = Sensor(rules=[rule_file], sinks=[failing, CallbackSink(healthy.append)], kernel=FakeKernel,
                    identity_deadline=0)
    sensor.start()
    sensor._dispatch.sinks[0].limit = 3  # a small backlog
    for k in range(1, 8):
        sensor.kernel.feed(batch_of(syscall("openat", 3, ktime=k, dirfd=-100, flags=0, name="/etc/shadow")))
        sensor.poll(0)
    sensor.close()
    lost = [r for r in healthy if r["kind"] == "lost" and r["reason"] == "sink_failed"]
    state = healthy[-1]["sinks"][str(failing)]
    assert state["backlog"] == 3 and state["dropped"] == sum(r["count"] for r in lost) > 0
    assert failing.records == []


def test_nothing_is_compiled_once_the_sensor_runs():
    """Compiled code is compiled, or loaded from Numba's cache, as the sensor starts: a
    compile at the first event of a kind stalls the drain for up to a second, and the
    ring fills (a typed container's own methods called from Python are compiled anew in
    every process). Every path of the identity and detect stages, with the built-in rules."""
    sensor = Sensor(kernel=FakeKernel, identity_deadline=0)
    at = {"cgroup_id": CGROUP}
    batch = batch_of(
        raw("fork", pid=500, ktime=2_000_000, child_pid=501, cgroup_id=CGROUP),  # a parent the table does not know
        syscall("execve", 0, pid=501, ktime=2_000_001, filename="/bin/sh", argv=b"sh\0-c\0x\0", header=at),
        raw("fork", pid=501, ktime=2_000_002, child_pid=502, cgroup_id=CGROUP),
        syscall("openat", 3, pid=502, ktime=2_000_003, dirfd=-100, flags=0, name="/etc/shadow", header=at),
        syscall("openat", 5, pid=502, ktime=2_000_004, dirfd=-100, flags=0, name="/etc/shadow", header=at),
        syscall("socket", 4, pid=502, ktime=2_000_005, domain=socket.AF_INET, socktype=socket.SOCK_STREAM, header=at),
        syscall("connect", 0, pid=502, ktime=2_000_006, fd=4, addr=inet("10.0.0.9", 4444), addrlen=16, header=at),
        syscall("dup2", 0, pid=502, ktime=2_000_007, oldfd=4, newfd=0, header=at),
        syscall("close", 0, pid=502, ktime=2_000_008, fd=3, header=at),
        raw("exit", pid=502, ktime=2_000_009, exit_code=0, cgroup_id=CGROUP))
    got, loaded = [], []
    sensor.sinks.append(CallbackSink(got.append))
    dispatch = numba.core.dispatcher.Dispatcher.compile

    def compile_or_load(dispatcher, signature):  # both a compile and a load from the cache come here
        loaded.append((dispatcher.py_func.__qualname__, str(signature)))
        return dispatch(dispatcher, signature)
    with sensor, pytest.MonkeyPatch.context() as patch:
        patch.setattr(numba.core.dispatcher.Dispatcher, "compile", compile_or_load)
        sensor.kernel.feed(batch_of(raw("cgroup", id=CGROUP, op=C["MAYFLY_CGROUP_MKDIR"], level=1, path=PATH,
                                        ktime=1_000_000)))
        sensor.kernel.feed(batch)
        for _ in range(4):
            sensor.poll(0)
    assert loaded == []
    alerts = {r["rule"] for r in got if r["kind"] == "alert"}
    assert {"Sensitive File Read in Container", "Stdio Redirected to Network in Container"} <= alerts

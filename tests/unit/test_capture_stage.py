"""The capture stage in the whole pipeline, without root (sensor.testing.kernel.FakeKernel
stands in for the kernel side): a container gone before its capture still gets a case
with the flight recorder's events and says what is missing; a process the kernel
stopped at a stopping needle is never left stopped, whether a capture takes it, no
rule matched, or its event was lost. The stopped processes are real children of the
test, stopped with SIGSTOP as the kernel would."""

import os
import signal
import subprocess
import time

import pytest

from sensor import CallbackSink, Sensor
from sensor.forensics.capture import AFTER_CAPTURE, Settings
from sensor.forensics import stage as capture_stage
from sensor.forensics.store import CaseStore
from sensor.testing.containers import wait_until
from sensor.testing.events import C, batch_of, raw, syscall
from sensor.testing.kernel import FakeKernel

CGROUP = 987_654_322
PATH = b"/mayfly-unit-capture".ljust(256, b"\0")
STOPPED = C["MAYFLY_SYSCALL_STOPPED"]


def sensor_with_cases(tmp_path, rule_file, got, **options):
    cases = []
    sensor = Sensor(rules=[rule_file], kernel=FakeKernel, identity_deadline=0, cases=tmp_path / "cases",
                    on_case=cases.append, **options)
    sensor.sinks.append(CallbackSink(got.append))
    return sensor, cases


def rule(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("- rule: Shadow read\n  desc: d\n  condition: evt.type = openat and fd.name = /etc/shadow and "
                    "container.id != host\n  output: shadow read\n  priority: WARNING\n")
    return path


def mkdir(cgroup_id=CGROUP, path=PATH):
    return batch_of(raw("cgroup", id=cgroup_id, op=C["MAYFLY_CGROUP_MKDIR"], level=1, path=path, ktime=1_000_000))


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def stopped_child():
    child = subprocess.Popen(["sleep", "30"])
    os.kill(child.pid, signal.SIGSTOP)
    wait_until(lambda: state(child.pid) == "T")
    return child


def poll_until(sensor, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sensor.poll(0)
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("not within the time")


@pytest.mark.parametrize("after", AFTER_CAPTURE)
def test_a_container_gone_before_its_capture_keeps_its_timeline_and_says_what_is_missing(tmp_path, after):
    got = []
    sensor, cases = sensor_with_cases(tmp_path, rule(tmp_path), got, capture_settings=Settings(after_capture=after))
    at = {"cgroup_id": CGROUP}
    with sensor:
        sensor.kernel.feed(mkdir())
        sensor.kernel.feed(batch_of(
            syscall("execve", 0, pid=600, ktime=2_000_000, filename="/bin/sh", argv=b"sh\0", header=at),
            syscall("openat", 3, pid=600, ktime=2_000_001, dirfd=-100, flags=0, name="/etc/shadow", header=at)))
        poll_until(sensor, lambda: any(r["kind"] == "case" for r in got))
    (record,) = [r for r in got if r["kind"] == "case"]
    assert record["state"] == "sealed" and record["container"]["id"] == "mayfly-unit-capture"
    assert not record["complete"] and record["trigger"] == {"rule": "Shadow read", "priority": "WARNING"}
    (manifest,) = cases  # the library's callback
    assert manifest["id"] == record["case"]
    assert any(m["what"] == "processes, memory and files" and "could not be frozen" in m["why"]
               for m in manifest["missing"])
    store = CaseStore(tmp_path / "cases")
    timeline = store.unpacked(store.manifest(manifest["id"]), "events", "timeline.msgpack")
    assert [(r["evt"]["type"], r["proc"]["pid"]) for r in timeline] == [("execve", 600), ("openat", 600)]


def test_a_process_the_kernel_stopped_is_captured_then_continued_or_continued_at_once(tmp_path):
    got = []
    sensor, cases = sensor_with_cases(tmp_path, rule(tmp_path), got)
    triggering, allowed = stopped_child(), stopped_child()
    at, elsewhere = {"cgroup_id": CGROUP}, {"cgroup_id": CGROUP + 1}
    try:
        with sensor:
            sensor.kernel.feed(mkdir())
            sensor.kernel.feed(mkdir(CGROUP + 1, b"/mayfly-unit-neighbour".ljust(256, b"\0")))
            sensor.poll(0)
            # A stopping needle's prefix matched both, in two containers; the rule matches the first only.
            sensor.kernel.stopped_tasks.update({triggering.pid: 1, allowed.pid: 1})
            sensor.kernel.feed(batch_of(
                syscall("openat", 3, pid=triggering.pid, ktime=3_000_000, dirfd=-100, flags=0, name="/etc/shadow",
                        header=at, event_flags=STOPPED),
                syscall("openat", 3, pid=allowed.pid, ktime=3_000_001, dirfd=-100, flags=0, name="/etc/shadow-",
                        header=elsewhere, event_flags=STOPPED)))
            poll_until(sensor, lambda: not sensor.kernel.stopped_tasks)  # both are user space's now
            assert state(allowed.pid) != "T"  # no alert: let go in the same batch
            poll_until(sensor, lambda: cases)
            assert state(triggering.pid) != "T"  # continued once captured
            assert cases[0]["capture"]["stopped_by_kernel"] == [triggering.pid]
    finally:
        for child in (triggering, allowed):
            child.kill()
            child.wait()


def test_a_stopped_process_whose_event_was_lost_is_continued_by_the_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(capture_stage, "SWEEP_S", 0.0)
    monkeypatch.setattr(capture_stage, "STOP_HOLD_S", 0.05)
    got = []
    sensor, _ = sensor_with_cases(tmp_path, rule(tmp_path), got)
    lost = stopped_child()
    try:
        with sensor:
            sensor.kernel.stopped_tasks[lost.pid] = time.monotonic_ns()  # no event will come
            sensor.poll(0)
            assert state(lost.pid) == "T"  # its event may still be on its way
            poll_until(sensor, lambda: state(lost.pid) != "T", timeout=2)
            assert lost.pid not in sensor.kernel.stopped_tasks
    finally:
        lost.kill()
        lost.wait()


def test_a_capture_by_hand_of_an_unknown_container_fails_clearly(tmp_path):
    sensor, _ = sensor_with_cases(tmp_path, rule(tmp_path), [])
    with sensor:
        future = sensor.capture("no-such-container")
        sensor.poll(0)
        exception = future.exception(timeout=1)
    assert isinstance(exception, LookupError) and "no running container 'no-such-container'" in str(exception)


def test_a_rules_capture_field_decides_over_its_priority(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- rule: Notice but captured\n  desc: d\n  condition: evt.type = openat and fd.name = /etc/a\n"
        "  output: a\n  priority: NOTICE\n  capture: true\n"
        "- rule: Warning but not captured\n  desc: d\n  condition: evt.type = openat and fd.name = /etc/b\n"
        "  output: b\n  priority: WARNING\n  capture: false\n")
    got = []
    sensor, _ = sensor_with_cases(tmp_path, rules, got)
    with sensor:
        sensor.kernel.feed(mkdir())
        sensor.kernel.feed(mkdir(CGROUP + 1, b"/mayfly-unit-neighbour".ljust(256, b"\0")))
        sensor.kernel.feed(batch_of(
            syscall("openat", 3, pid=700, ktime=4_000_000, dirfd=-100, flags=0, name="/etc/b",
                    header={"cgroup_id": CGROUP + 1}),
            syscall("openat", 3, pid=701, ktime=4_000_001, dirfd=-100, flags=0, name="/etc/a",
                    header={"cgroup_id": CGROUP})))
        poll_until(sensor, lambda: any(r["kind"] == "case" for r in got))
        for _ in range(5):
            sensor.poll(0)
    assert {r["rule"] for r in got if r["kind"] == "alert"} == {"Notice but captured", "Warning but not captured"}
    assert [(r["container"]["cgroup_id"], r["trigger"]["rule"]) for r in got if r["kind"] == "case"] == [
        (CGROUP, "Notice but captured")]


def test_the_policy_sets_each_containers_capture_level_priority_and_retention(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("- rule: Notice read\n  desc: d\n  condition: evt.type = openat and fd.name = /etc/a\n"
                     "  output: a\n  priority: NOTICE\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text("- policy: Kept long, events only, from NOTICE\n  condition: container.id = mayfly-unit-capture\n"
                      "  verdict: allow\n  forensics: {capture: events, priority: notice, ttl: 2d, weight: 3}\n"
                      "- policy: Never captured\n  condition: container.id = mayfly-unit-neighbour\n"
                      "  verdict: allow\n  forensics: {capture: none, priority: debug}\n")
    got = []
    sensor, cases = sensor_with_cases(tmp_path, rules, got, policy=policy)
    with sensor:
        sensor.kernel.feed(mkdir())
        sensor.kernel.feed(mkdir(CGROUP + 1, b"/mayfly-unit-neighbour".ljust(256, b"\0")))
        sensor.kernel.feed(batch_of(*(syscall("openat", 3, pid=700 + k, ktime=4_000_000 + k, dirfd=-100, flags=0,
                                              name="/etc/a", header={"cgroup_id": cgroup})
                                      for k, cgroup in enumerate((CGROUP + 1, CGROUP)))))
        poll_until(sensor, lambda: any(r["kind"] == "case" for r in got))
        for _ in range(5):
            sensor.poll(0)
    policies = {r["container"]["cgroup_id"]: r for r in got if r["kind"] == "policy"}
    assert policies[CGROUP]["forensics"] == {"capture": "events", "priority": "NOTICE", "ttl_s": 172800.0,
                                             "weight": 3.0}
    (case,) = [r for r in got if r["kind"] == "case"]  # NOTICE triggers it, by its own priority; never the other's
    assert case["container"]["cgroup_id"] == CGROUP and case["state"] == "sealed"
    assert any("capture level for this container is events" in m["why"] for m in case["missing"])
    (listed,) = CaseStore(tmp_path / "cases").list()
    assert listed["value"]["weight"] == 3.0

"""The cgroup table: identities, held records, lifecycle records and bounded memory,
on runtime state laid out in a directory (tests/e2e runs real runc containers)."""

import json

import numpy as np

from sensor import records
from sensor.kernel import layout
from sensor.identity.cgroups import CgroupTable
from sensor.identity.runtimes import Resolver

EVENTS = layout.events()


def runc_state(root, container_id: str, annotations: dict) -> None:
    directory = root / "state" / "run" / "runc" / container_id
    directory.mkdir(parents=True)
    (directory / "state.json").write_text(json.dumps({
        "id": container_id, "created": "2026-11-24T06:00:00Z", "cgroup_paths": {"": f"/sys/fs/cgroup/{container_id}"},
        "config": {"labels": [f"{k}={v}" for k, v in annotations.items()] + ["bundle=/b"]}}))


def table(tmp_path, **options) -> CgroupTable:
    (tmp_path / "state").mkdir(exist_ok=True)
    return CgroupTable(str(tmp_path / "cgroup2"), Resolver(str(tmp_path / "state")), **options)


def held_event(t: CgroupTable, cgroup_id: int) -> dict:
    return records.new("event", 1, container=t.container(cgroup_id), evt={"type": "execve"})


def events_of(kind: str, cgroup_ids: list[int]) -> dict:
    arrays = np.zeros(len(cgroup_ids), EVENTS.structs[f"mayfly_{kind}_event"])
    arrays["hdr"]["cgroup_id"] = cgroup_ids
    return {kind: [arrays]}


def test_scan_names_the_root_host_and_announces_running_containers(tmp_path):
    runc_state(tmp_path, "web-1", {"team": "red"})
    (tmp_path / "cgroup2" / "web-1").mkdir(parents=True)
    (tmp_path / "cgroup2" / "system.slice" / "cron.service").mkdir(parents=True)
    t = table(tmp_path)
    t.scan(now_ns=123)
    assert t.container((tmp_path / "cgroup2").stat().st_ino)["id"] == "host"
    assert t.container((tmp_path / "cgroup2" / "system.slice" / "cron.service").stat().st_ino)["id"] == "host"
    web = (tmp_path / "cgroup2" / "web-1").stat().st_ino
    (start,) = t.take()
    assert start["kind"] == "container" and start["state"] == "start" and start["existing"] is True
    assert start["ts"] == 123 and start["cgroup"] == "/web-1"
    assert start["container"] == {"id": "web-1", "runtime": "runc", "labels": {"team": "red"},
                                  "created": "2026-11-24T06:00:00Z", "cgroup_id": web}
    t.made(web, "/web-1", 456)  # the same cgroup seen again as an event: nothing new
    assert t.take() == []


def test_records_wait_for_the_identity_then_go_out_enriched(tmp_path):
    t = table(tmp_path)
    t.made(7, "/web-2", 1000)
    assert t.pending == 1 and t.take() == []
    first = held_event(t, 7)
    second = records.new("syscall_counts", 2, container=t.container(7), counts={"execve": 1})  # reports too
    assert t.hold(first) and t.hold(second)
    assert t.tick() == []  # still no state, deadline not reached
    runc_state(tmp_path, "web-2", {"io.kubernetes.cri.sandbox-name": "shop"})
    start, *released = t.tick()
    assert start["state"] == "start" and start["existing"] is False and start["ts"] == 1000
    assert released == [first, second]
    for record in (start, first, second):
        assert record["container"]["id"] == "web-2" and record["container"]["runtime"] == "runc"
        assert record["container"]["k8s"] == {"pod": {"name": "shop"}} and "resolved" not in record["container"]
    assert t.pending == 0 and not t.hold(held_event(t, 7))


def test_after_the_deadline_records_go_out_with_what_is_known(tmp_path):
    t = table(tmp_path, deadline_s=0.0)
    t.made(8, "/web-3", 1000)
    record = held_event(t, 8)
    assert t.hold(record)
    start, released = t.tick()
    assert released is record
    assert record["container"] == start["container"] == {"id": "web-3", "resolved": False, "cgroup_id": 8}


def test_holding_is_bounded(tmp_path):
    t = table(tmp_path, hold_max=3)
    t.made(9, "/web-4", 1000)
    kept = [held_event(t, 9) for _ in range(3)]
    assert all(t.hold(r) for r in kept)
    assert t.take()[1:] == kept  # the third filled it: released at once, unresolved
    assert not t.hold(held_event(t, 9))


def test_host_cgroups_are_neither_held_nor_announced(tmp_path):
    t = table(tmp_path)
    t.made(10, "/system.slice/ssh.service", 1000)
    t.removed(10, 2000, {})
    assert not t.hold(held_event(t, 10)) and t.take() == [] and t.container(10)["id"] == "host"


def test_exit_records_carry_lifetime_processes_events_and_losses(tmp_path):
    runc_state(tmp_path, "web-5", {})
    t = table(tmp_path)
    t.made(11, "/web-5", 1_000_000_000)
    t.account(events_of("exit", [11, 11, 12]) | events_of("fork", [11]))
    t.account(events_of("syscall", [11] * 5))
    t.removed(11, 3_500_000_000, {"rate_limited": 0, "ring_full": 0})
    start, end = t.take()
    assert end["kind"] == "container" and end["state"] == "exit" and end["ts"] == 3_500_000_000
    assert (end["lifetime_s"], end["processes"], end["events"]) == (2.5, 2, 8)
    assert end["lost"] == {"rate_limited": 0, "ring_full": 0} and end["complete"] is True
    t.made(13, "/web-6", 0)
    t.removed(13, 10, {"rate_limited": 4, "ring_full": 1})
    assert t.take()[-1]["complete"] is False  # unresolved, then gone: released at removal


def test_removed_containers_are_kept_for_the_grace_period_then_dropped(tmp_path):
    runc_state(tmp_path, "web-7", {})
    t = table(tmp_path, grace_s=3600)
    t.made(14, "/web-7", 0)
    t.removed(14, 10, {})
    t.tick()
    assert t.container(14)["id"] == "web-7"
    t.grace_s = 0
    t.tick()
    assert 14 not in t.entries and t.container(14)["resolved"] is False


def test_the_table_stays_bounded_under_churn(tmp_path):
    t = table(tmp_path, grace_s=3600, max_removed=100)
    for cgroup_id in range(1, 5001):
        t.made(cgroup_id, f"/system.slice/unit-{cgroup_id}.service", cgroup_id)
        t.removed(cgroup_id, cgroup_id + 1, {})
    assert len(t.entries) == 100 and min(t.entries) == 4901

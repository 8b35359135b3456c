"""Issue 16's acceptance with real runc containers under `mayfly run`: an alert freezes
its container and its case holds the secret in the process's heap, the flight
recorder's events from before the trigger and the file the container wrote; the
store keeps distinct cases within its budget; a hand-asked capture goes through the
control socket; a container someone else froze stays frozen."""

import html
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgpack

from sensor.forensics.store import CaseStore
from sensor.system import host
from sensor.system.freezer import Freezer
from sensor.testing.containers import wait_until
from sensor.testing.running import RunningSensor
from test_container_identity import of_cgroup, read_records

ATTACK = "/usr/local/bin/attack"  # tests/e2e/attack.c, built static
SECRET = "topsecret-42-value"
# The shell holds the secret in its heap (a variable, built at run time so that it is not
# in the command line), writes a file, reads the stand-in for /etc/shadow (a WARNING
# rule) and stays about 300 ms; the neighbour looks alike but reads nothing sensitive.
ATTACKER = ["/bin/sh", "-c", "S=topsecret-$((6*7))-value; echo dropped > /tmp/written.txt; "
                             "cat /etc/shadow >/dev/null; sleep 0.3; true"]
# The same, with a listener of its own in its network namespace.
LISTENING = ["/bin/sh", "-c", "httpd -f -p 8080 & S=topsecret-$((6*7))-value; echo dropped > /tmp/written.txt; "
                              "sleep 0.1; cat /etc/shadow >/dev/null; sleep 0.3; kill $!; true"]
NEIGHBOUR = ["/bin/sh", "-c", "S=harmless; echo hello > /tmp/note.txt; cat /etc/hostname >/dev/null; sleep 0.3; true"]


def mayfly(*args):
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True)


def render_in_chromium(page):
    """What Debian's chromium, headless, laid out of the page (its script marks the body)."""
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'data-rendered="([^"]*)"', dom.stdout)
    assert found, f"chromium rendered no page: {dom.stderr[-2000:]}"
    return json.loads(html.unescape(found[1]))


def shadow(tmp_path):
    path = tmp_path / "shadow"
    path.write_text("root:*:19000:0:99999:7:::\n")
    return {"/etc/shadow": str(path)}


def test_an_alert_captures_the_heap_secret_the_events_before_it_and_the_written_file(rig, tmp_path):
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--output", f"file:{output}", "--report-interval", "3600")
    try:
        attacked = rig.run(LISTENING, files=shadow(tmp_path))
        benign = rig.run(NEIGHBOUR)
        wait_until(lambda: any(r["kind"] == "case" for r in read_records(output)), timeout=20)
    finally:
        sensor.stop()
    assert attacked.exit_code == 0 and benign.exit_code == 0  # thawed after the capture: it ran to its end
    cases = [r for r in read_records(output) if r["kind"] == "case"]
    (record,) = cases  # the neighbour raised no case
    assert record["state"] == "sealed" and record["container"]["id"] == attacked.id
    assert record["trigger"] == {"rule": "Sensitive File Read in Container", "priority": "WARNING"}

    listed = json.loads(mayfly("cases", "--store", str(sensor.cases), "list", "--json").stdout)
    assert [(c["id"], c["container"]["id"], c["trigger"]["rule"]) for c in listed] == \
        [(record["case"], attacked.id, "Sensitive File Read in Container")]
    out = tmp_path / "export"
    assert mayfly("cases", "--store", str(sensor.cases), "export", record["case"], str(out)).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"], manifest["missing"]
    assert manifest["capture"]["after_capture"] == "thaw"
    assert 0 < manifest["timings"]["trigger_to_frozen_s"] < 1.0

    # The heap secret, in the memory of the shell that read the file.
    tree = msgpack.unpackb((out / "processes" / "tree.msgpack").read_bytes())
    (shell,) = [p for p in tree if p["name"] == "sh"]
    # cat, held by the kernel at its open of the file (a stopping needle), is captured too.
    assert {p["name"] for p in tree} == {"sh", "httpd", "cat"} and \
        all(p["ppid"] == shell["pid"] for p in tree if p is not shell)
    assert manifest["capture"]["stopped_by_kernel"] == [next(p["pid"] for p in tree if p["name"] == "cat")]
    holding = [p for p in (out / "memory" / str(shell["pid"])).iterdir() if SECRET.encode() in p.read_bytes()]
    assert holding, "the secret is in no exported mapping of the shell"
    assert (out / "executable" / str(shell["pid"])).read_bytes()[:4] == b"\x7fELF"
    # The written file, by its path in the container.
    assert (out / "file" / "tmp" / "written.txt").read_text() == "dropped\n"
    written = msgpack.unpackb((out / "files" / "written.msgpack").read_bytes())
    assert {"path": "/tmp/written.txt", "type": "file", "size": 8, "kept": True}.items() <= \
        next(w for w in written if w["path"] == "/tmp/written.txt").items()
    # Its network namespace's socket table, by sock_diag: the listener, and not the host's sockets.
    sockets = msgpack.unpackb((out / "sockets" / "table.msgpack").read_bytes())
    assert sockets["namespace"] != os.readlink("/proc/self/ns/net")
    assert [(s["sport"], s["state"]) for s in sockets["tcp"] + sockets["tcp6"]] == [(8080, 10)]  # LISTEN
    # The flight recorder's events of this container from before the trigger: its shell's exec.
    timeline = msgpack.unpackb((out / "events" / "timeline.msgpack").read_bytes())
    trigger_ts = manifest["capture"]["trigger_ts"]
    before = [r for r in timeline if r["ts"] <= trigger_ts]
    assert {r["container"]["id"] for r in timeline} == {attacked.id}
    assert any(r["evt"]["type"] == "execve" and r["proc"]["comm"] == "sh" for r in before)
    assert any(r["evt"]["type"] == "openat" and r["evt"].get("name") == "/etc/shadow" for r in before), \
        [r["evt"] for r in before if r["evt"]["type"] == "openat"]
    events = next(a for a in manifest["artifacts"] if a["kind"] == "events")
    assert events["before_trigger"] == len(before) and events["records"] == len(timeline)
    # The report, rendered by a real headless browser: what it laid out matches the case.
    report = tmp_path / "report.html"
    assert mayfly("cases", "--store", str(sensor.cases), "report", record["case"], "--html", str(report)).returncode == 0
    rendered = render_in_chromium(report)
    assert rendered["width"] == 960 and rendered["height"] > 100 and rendered["trigger"], rendered
    assert (rendered["marks"], rendered["processes"], rendered["artifacts"]) == (
        len(timeline), len(tree), len(manifest["artifacts"]))
    # Other rules over the case's recorded events.
    rules = tmp_path / "other.yaml"
    rules.write_text("- rule: Cat Read Below Etc\n  desc: d\n  condition: evt.type = openat and proc.name = cat and "
                     "fd.name startswith /etc\n  output: cat read %fd.name\n  priority: NOTICE\n")
    replayed = mayfly("replay", record["case"], "--store", str(sensor.cases), "--rules", str(rules))
    assert replayed.returncode == 0 and replayed.stdout.count("rule=Cat Read Below Etc") == 1, replayed.stdout
    assert "output=cat read /etc/shadow" in replayed.stdout
    # The neighbour's alerts: none at WARNING, so it was never frozen.
    assert not [r for r in of_cgroup(read_records(output), benign.cgroup_id) if r["kind"] == "alert"
                and r["priority"] == "WARNING"]


def test_a_capture_asked_for_by_hand_goes_through_the_control_socket_and_one_frozen_by_another_stays_so(
        rig, tmp_path):
    sensor = RunningSensor(tmp_path, "--output", f"file:{tmp_path / 'records.msgpack'}",
                           "--report-interval", "3600")
    mine = rig.create(["/bin/sh", "-c", "while true; do sleep 0.05; done"])
    theirs = rig.create(["/bin/sh", "-c", "while true; do sleep 0.05; done"])
    try:
        mine.start()
        theirs.start()
        time.sleep(0.5)  # both named by the sensor
        done = mayfly("capture", mine.id, "--control", sensor.control)
        assert done.returncode == 0, done.stderr
        case = json.loads(done.stdout)
        assert case["container"]["id"] == mine.id and case["complete"], case
        assert not Freezer(mine.cgroup_dir).frozen  # thawed after

        other = Freezer(theirs.cgroup_dir)
        other.freeze()  # someone else's freeze
        frozen_case = json.loads(mayfly("capture", theirs.id, "--control", sensor.control).stdout)
        assert other.frozen, "the sensor thawed a container someone else had frozen"
        assert any("frozen by someone else" in m["why"] for m in frozen_case["missing"])
        other.thaw()

        unknown = mayfly("capture", "no-such-container", "--control", sensor.control)
        assert unknown.returncode != 0 and "no running container 'no-such-container'" in unknown.stderr
    finally:
        for container in (mine, theirs):
            container.kill()
            container.wait()
            container.delete()
        sensor.stop()
    store = CaseStore(sensor.cases)
    assert {c["container"]["id"]: c["trigger"]["priority"] for c in store.list()} == {mine.id: "NONE",
                                                                                      theirs.id: "NONE"}


def test_a_process_whose_trigger_is_its_last_act_is_held_by_the_kernel_and_its_heap_captured(rig, tmp_path):
    attack = rig.compile_static("attack", (Path(__file__).parent / "attack.c").read_text())
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--output", f"file:{output}", "--report-interval", "3600")
    try:
        files = {**shadow(tmp_path), ATTACK: attack}
        last = rig.run([ATTACK, "last_act", "/etc/shadow"], files=files)
        allowed = rig.run([ATTACK, "last_act", "/etc/hostname"], files=files)
        wait_until(lambda: any(r["kind"] == "case" for r in read_records(output)), timeout=20)
    finally:
        sensor.stop()
    assert last.exit_code == 0 and allowed.exit_code == 0  # continued after its capture, and exited as it would
    (record,) = [r for r in read_records(output) if r["kind"] == "case"]
    assert record["container"]["id"] == last.id
    out = tmp_path / "export"
    CaseStore(sensor.cases).export(record["case"], out)
    manifest = json.loads((out / "manifest.json").read_text())
    (stopped,) = manifest["capture"]["stopped_by_kernel"]
    assert stopped == manifest["triggers"][0]["proc"]["pid"]
    holding = [p for p in (out / "memory" / str(stopped)).iterdir() if b"last-act-42-secret" in p.read_bytes()]
    assert holding, "the last act's heap secret is in no exported mapping"


def test_under_a_small_budget_alike_cases_share_blobs_and_give_way_to_a_distinct_one(rig, tmp_path):
    budget = 6 << 20  # about three alike cases: a first one is ~4.5 MB, each alike one adds ~0.8 MB
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--output", f"file:{output}", "--report-interval", "3600",
                           "--cases-budget", str(budget))
    distinct = ["/bin/sh", "-c", "echo key > /tmp/server.key; cat /tmp/server.key >/dev/null; sleep 0.3; true"]
    try:
        alike = [rig.run(ATTACKER, files=shadow(tmp_path)) for _ in range(5)]
        wait_until(lambda: sum(r["kind"] == "case" for r in read_records(output)) == 5, timeout=30)
        other = rig.run(distinct)
        wait_until(lambda: sum(r["kind"] == "case" for r in read_records(output)) == 6, timeout=30)
    finally:
        sensor.stop()
    store = CaseStore(sensor.cases)
    assert store.used_bytes() <= budget
    kept = {c["container"]["id"]: c for c in store.list()}
    # The distinct case is kept whole; so is the first of the alike ones, worth the most of them.
    assert other.id in kept and store.manifest(kept[other.id]["id"])["complete"]
    assert alike[0].id in kept and kept[alike[0].id]["value"]["similar"] == 0
    # The later alike ones were refused room or let go: never the store over its budget.
    later = [kept.get(r.id) for r in alike[1:]]
    assert any(c is None or not store.manifest(c["id"])["complete"] for c in later), later
    # Alike cases share their blobs (the executable, the libraries): the store holds far
    # less than their artifacts add up to.
    assert sum(c["bytes"] for c in kept.values()) > 1.5 * store.used_bytes()


def test_a_full_disk_marks_the_case_incomplete_and_the_sensor_goes_on(rig, tmp_path):
    store = tmp_path / "small"
    store.mkdir()
    host.mount("tmpfs", str(store), options="size=3m,mode=0700")  # a real full disk, a small one
    output = tmp_path / "records.msgpack"
    try:
        sensor = RunningSensor(tmp_path, "--output", f"file:{output}", "--report-interval", "3600",
                               "--cases", str(store))
        try:
            first = rig.run(ATTACKER, files=shadow(tmp_path))
            wait_until(lambda: any(r["kind"] == "case" for r in read_records(output)), timeout=20)
            second = rig.run(ATTACKER, files=shadow(tmp_path))  # still captured: nothing stopped
            wait_until(lambda: sum(r["kind"] == "case" for r in read_records(output)) == 2, timeout=20)
        finally:
            sensor.stop()  # exits 0
        cases = [r for r in read_records(output) if r["kind"] == "case"]
        assert [c["container"]["id"] for c in cases] == [first.id, second.id]
        assert cases[0]["state"] == "sealed" and not cases[0]["complete"], cases[0]
        assert any("No space left on device" in m["why"] for m in cases[0]["missing"]), cases[0]["missing"]
        assert {r.exit_code for r in (first, second)} == {0}  # thawed, ran to their end
    finally:
        host.umount(str(store))


def test_after_capture_kill_kills_the_container_and_says_so(rig, tmp_path):
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--output", f"file:{output}", "--report-interval", "3600",
                           "--after-capture", "kill")
    try:
        killed = rig.run(["/bin/sh", "-c", "cat /etc/shadow >/dev/null; sleep 5; echo survived"],
                         files=shadow(tmp_path))
        wait_until(lambda: any(r["kind"] == "case" for r in read_records(output)), timeout=20)
    finally:
        sensor.stop()
    assert killed.exit_code == -9 and "survived" not in killed.stdout
    (record,) = [r for r in read_records(output) if r["kind"] == "case"]
    assert CaseStore(sensor.cases).manifest(record["case"])["capture"]["after_capture"] == "kill"


def test_the_control_socket_is_root_only(tmp_path):
    sensor = RunningSensor(tmp_path, "--output", f"file:{tmp_path / 'records.msgpack'}")
    try:
        assert stat.S_IMODE(os.stat(sensor.control).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(sensor.control)).st_mode) == 0o700
        child = os.fork()
        if child == 0:  # as nobody, what `mayfly capture` would do: connect
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                socket.socket(socket.AF_UNIX).connect(sensor.control)
            except PermissionError:
                code = 0
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0, "nobody could connect"
        as_root = mayfly("capture", "anything", "--control", sensor.control)  # root is answered
        assert as_root.returncode != 0 and "no running container 'anything'" in as_root.stderr, as_root.stderr
    finally:
        sensor.stop()


def test_the_kernel_stops_a_process_for_the_access_its_rule_asks_and_at_a_named_exec(rig, tmp_path):
    """`Write Below Binary Directory` (ERROR) has a prefix needle on /lib: an open of a
    library to read it is not held; the write below /bin is, and captured. `Netcat or
    Socat Run` (WARNING) holds nc at its exec."""
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--output", f"file:{output}", "--report-interval", "3600")
    try:
        writer = rig.run(["/bin/sh", "-c", "cat /lib/x86_64-linux-gnu/libc.so.6 >/dev/null; "
                                           "echo '#!/bin/sh' > /bin/dropped; true"])
        wait_until(lambda: any(r["kind"] == "case" for r in read_records(output)), timeout=20)
        # A trigger on a process name (Netcat, WARNING) holds the process at its exec,
        # before its first instruction.
        attack = rig.compile_static("attack", (Path(__file__).parent / "attack.c").read_text())
        netcat = rig.run(["/bin/sh", "-c", "/usr/local/bin/nc socket; true"], files={"/usr/local/bin/nc": attack})
        wait_until(lambda: sum(r["kind"] == "case" for r in read_records(output)) == 2, timeout=20)
    finally:
        sensor.stop()
    assert writer.exit_code == 0
    (alert,) = [r for r in of_cgroup(read_records(output), writer.cgroup_id)
                if r["kind"] == "alert" and r["rule"] == "Write Below Binary Directory in Container"]
    assert alert["evt"]["name"] == "/bin/dropped" and alert["evt"]["stopped"] is True
    record, exec_record = [r for r in read_records(output) if r["kind"] == "case"]
    store = CaseStore(sensor.cases)
    manifest = store.manifest(record["case"])
    assert manifest["capture"]["stopped_by_kernel"] == [alert["proc"]["pid"]]
    assert netcat.exit_code == 0 and exec_record["container"]["id"] == netcat.id
    exec_case = store.manifest(exec_record["case"])
    (held,) = exec_case["capture"]["stopped_by_kernel"]
    tree = store.unpacked(exec_case, "processes", "tree.msgpack")
    assert {p["name"]: p["pid"] for p in tree}["nc"] == held and exec_case["triggers"][0]["evt"]["stopped"]
    opens = [r["evt"] for r in store.unpacked(manifest, "events", "timeline.msgpack")
             if r["evt"]["type"] == "openat" and str(r["evt"].get("name", "")).startswith(("/lib/", "/bin/"))]
    assert {(e["name"], e.get("stopped", False)) for e in opens} >= {
        ("/lib/x86_64-linux-gnu/libc.so.6", False), ("/bin/dropped", True)}, opens

"""Rules in `mayfly run`: a rule's alert names the container it fired in, and a benign
neighbour raises none."""

import signal
from pathlib import Path

from sensor.testing.running import RunningSensor
from test_container_identity import of_cgroup, read_records

from sensor.testing.containers import wait_until

ATTACK = "/usr/local/bin/attack"


def test_a_shell_in_a_container_raises_the_builtin_alert_and_a_plain_binary_does_not(rig, tmp_path):
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--output", f"file:{output}", "--report-interval", "3600")
    try:
        shell = rig.run(["/bin/sh", "-c", "/bin/true"])
        benign = rig.run(["/bin/true"])
    finally:
        sensor.stop()
    records = read_records(output)
    alerts = [r for r in of_cgroup(records, shell.cgroup_id) if r["kind"] == "alert"]
    assert [a["rule"] for a in alerts] == ["Shell Spawned in Container"]
    (alert,) = alerts
    assert alert["priority"] == "NOTICE" and "mitre_execution" in alert["tags"]
    assert alert["container"]["id"] == shell.id and alert["container"]["runtime"] == "runc"
    assert alert["proc"]["comm"] == "sh" and alert["evt"]["type"] == "execve"
    assert alert["source_file"].endswith("mayfly_rules.yaml")
    assert f"container.id={shell.id}" in alert["output"] and "proc.name=sh" in alert["output"]
    assert [r for r in of_cgroup(records, benign.cgroup_id) if r["kind"] == "alert"] == []
    assert not [r for r in records if r["kind"] == "event"]  # decoded for the rules, not emitted


def test_a_file_dropped_made_executable_and_run_is_one_sequence_alert_and_a_scan_a_rate_alert(rig, tmp_path):
    attack = rig.compile_static("attack", (Path(__file__).parent / "attack.c").read_text())
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--output", f"file:{output}", "--report-interval", "3600")
    try:
        dropped = rig.run(["/bin/sh", "-c", "cp /bin/busybox /tmp/tool && chmod +x /tmp/tool && /tmp/tool true"])
        # neighbours: the same steps without the run, and with the run of another file
        unrun = rig.run(["/bin/sh", "-c", "cp /bin/busybox /tmp/tool && chmod +x /tmp/tool"])
        other = rig.run(["/bin/sh", "-c", "cp /bin/busybox /tmp/tool && chmod +x /tmp/tool && /bin/true"])
        scan = rig.run([ATTACK, "scan", "198.51.100", "25", "80"], files={ATTACK: attack}, host_network=True)
        few = rig.run([ATTACK, "scan", "198.51.100", "5", "80"], files={ATTACK: attack}, host_network=True)
    finally:
        sensor.stop()
    records = read_records(output)

    def alerts(result, rule):  # other rules fire too (the shell each starts): not this test's
        return [r for r in of_cgroup(records, result.cgroup_id) if r["kind"] == "alert" and r["rule"] == rule]

    drop, scanning = "Drop, Make Executable and Run in Container", "Network Scan from Container"
    (sequence,) = alerts(dropped, drop)
    assert [(e["evt"]["type"], e["proc"]["comm"]) for e in sequence["events"]] == [
        ("openat", "cp"), ("chmod", "chmod"), ("execve", "tool")]
    assert sequence["container"]["id"] == dropped.id and "file=/tmp/tool" in sequence["output"]
    assert alerts(unrun, drop) == [] and alerts(other, drop) == []
    (rate,) = alerts(scan, scanning)
    assert rate["container"]["id"] == scan.id
    assert len({e["evt"]["fd"]["remote"]["addr"] for e in rate["events"]}) == len(rate["events"]) == 16
    assert alerts(few, scanning) == []


def test_rules_reload_on_sighup_and_on_change_and_a_broken_file_keeps_the_old_ones(rig, tmp_path):
    rules = tmp_path / "rules.yaml"
    rule = ("- rule: Ran {name}\n  desc: d\n  condition: evt.type = execve and proc.name = {name}\n"
            "  output: ran %proc.name\n  priority: NOTICE\n")
    rules.write_text(rule.format(name="true"))
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, "--rules", str(rules), "--output", f"file:{output}", "--report-interval", "3600")

    def reloaded(count):
        return sum(e["event"] == "rules reloaded" for e in sensor.logs()) >= count

    try:
        first = rig.run(["/bin/true"])
        rules.write_text(rule.format(name="echo"))  # a change is seen within a second
        wait_until(lambda: reloaded(1))
        second = rig.run(["/bin/sh", "-c", "/bin/true; /bin/echo"])
        rules.write_text(rule.format(name="true") + "- rule: Broken\n  desc: d\n  condition: proc.name =\n")
        wait_until(lambda: any(e["event"].startswith("rules not reloaded") for e in sensor.logs()))
        third = rig.run(["/bin/sh", "-c", "/bin/true; /bin/echo"])  # still the rules of the second
        rules.write_text(rule.format(name="true"))
        wait_until(lambda: reloaded(2))
        fourth = rig.run(["/bin/sh", "-c", "/bin/true; /bin/echo"])
        sensor.proc.send_signal(signal.SIGHUP)  # no change: reloaded because it is asked
        wait_until(lambda: reloaded(3))
    finally:
        sensor.stop()
    records = read_records(output)

    def fired(result):
        return [r["rule"] for r in of_cgroup(records, result.cgroup_id) if r["kind"] == "alert"]

    assert fired(first) == ["Ran true"]
    assert fired(second) == fired(third) == ["Ran echo"]
    assert fired(fourth) == ["Ran true"]

"""Rules in `mayfly run`: a rule's alert names the container it fired in, and a benign
neighbour raises none."""

from running import RunningSensor
from test_container_identity import of_cgroup, read_records


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

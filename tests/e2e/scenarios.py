"""Attack scenarios in runc containers under one `mayfly run`, for the rule tests."""

import socket
from pathlib import Path

from sensor.testing.running import RunningSensor
from test_container_identity import of_cgroup, read_records

ATTACK = "/usr/local/bin/attack"  # tests/e2e/attack.c, built static


def run_scenarios(rig, tmp_path, sensor_args, scenarios, cgroups=None):
    """Run each scenario in a container and return {key: the rule names of its alerts}
    (and fill `cgroups`, if given, with {key: the container's cgroup id}).
    A scenario: "args"; "files" mapping container paths to "secret" (a stand-in for
    /etc/shadow) or "attack" (the helper, under that path); "attack": the helper at
    ATTACK; "port" in args: a listener of the test's; and the rig's host_network,
    capabilities and uid. Every alert must name its container."""
    helper = rig.compile_static("attack", (Path(__file__).parent / "attack.c").read_text())
    secret = tmp_path / "secret"
    secret.write_text("root:*:19000:0:99999:7:::\n")
    stand_ins = {"secret": str(secret), "attack": helper}
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    output = tmp_path / "records.msgpack"
    sensor = RunningSensor(tmp_path, *sensor_args, "--output", f"file:{output}", "--report-interval", "3600")
    ran = {}
    try:
        for key, scenario in scenarios.items():
            files = {path: stand_ins[name] for path, name in scenario.get("files", {}).items()}
            if scenario.get("attack"):
                files[ATTACK] = helper
            args = [str(listener.getsockname()[1]) if a == "port" else a for a in scenario["args"]]
            ran[key] = rig.run(args, files=files, host_network=scenario.get("host_network", False),
                               capabilities=scenario.get("capabilities", ()), uid=scenario.get("uid", 0))
    finally:
        sensor.stop()
        listener.close()
    records = read_records(output)
    fired = {}
    for key, result in ran.items():
        alerts = [r for r in of_cgroup(records, result.cgroup_id) if r["kind"] == "alert"]
        assert all(a["container"]["id"] == result.id and a["container"].get("runtime") == "runc" for a in alerts), alerts
        fired[key] = {a["rule"] for a in alerts}
        if cgroups is not None:
            cgroups[key] = result.cgroup_id
    return fired

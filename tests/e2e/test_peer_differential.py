"""The BCC peer of the benchmarks (benchmarks/bcc_peer.py: the built-in rules as plain
Python predicates over each decoded event, container identity by cgroup id) raises the
alerts Mayfly raises, on the same workloads: every built-in rule's attack and benign
neighbour (test_builtin_rules.CASES), each in a runc container, with both attached at
once. So the benchmarks compare sensors that do the same work."""

import json
import signal
import subprocess
import sys
from pathlib import Path

from scenarios import run_scenarios
from test_builtin_rules import CASES

from sensor.testing.containers import RigError, wait_until

PEER = Path(__file__).resolve().parents[2] / "benchmarks" / "bcc_peer.py"
# What the peer does not see as Mayfly does (peer_rules.py's docstring): none of the
# cases needs it, so none is left out.
NOT_COVERED: set[str] = set()


def test_the_bcc_peer_raises_the_alerts_mayfly_raises(rig, tmp_path):
    scenarios = {(rule, role): case for rule, cases in CASES.items() for role, case in zip(("attack", "benign"), cases)}
    out, err = tmp_path / "peer.out", tmp_path / "peer.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        peer = subprocess.Popen([sys.executable, str(PEER)], stdout=stdout, stderr=stderr)
    try:
        def ready():
            if peer.poll() is not None:
                raise RigError(f"the BCC peer exited: {err.read_text()[-3000:]}")
            return '{"ready": true}' in out.read_text()
        wait_until(ready, timeout=120, interval=0.1)
        cgroups = {}
        mayfly = run_scenarios(rig, tmp_path, [], scenarios, cgroups)
    finally:
        peer.send_signal(signal.SIGINT)
        peer.wait(timeout=60)
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    assert summary["lost"] == 0
    fired = {int(cgroup): set(rules) for cgroup, rules in summary["fired"].items()}
    differ = {key: {"mayfly": sorted(mayfly[key] - NOT_COVERED), "peer": sorted(fired.get(cgroups[key], set()))}
              for key in scenarios if mayfly[key] - NOT_COVERED != fired.get(cgroups[key], set())}
    assert differ == {}, differ
    # Both raised something: the comparison is not of two silent sensors.
    assert all(rule in mayfly[rule, "attack"] for rule in CASES)

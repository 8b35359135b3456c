"""`mayfly run`, as `sudo make run` starts it, shows every exec of a real container with
its cgroup id, on the terminal and in the msgpack record file."""

import json
import os
import signal
import subprocess
import sys

from sensor import read_stream
from sensor.testing.containers import wait_until

RUNS = 5  # prime


def start_sensor(tmp_path):
    output = tmp_path / "records.msgpack"
    stderr = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--output", str(output)],
                            stdout=subprocess.PIPE, stderr=stderr, text=True)

    def started():
        assert proc.poll() is None, open(stderr.name).read()
        return any(json.loads(line)["event"] == "sensor started" for line in open(stderr.name))
    wait_until(started, timeout=60)
    return proc, output, stderr.name


def test_run_shows_container_execs_with_cgroup_id(rig, tmp_path):
    proc, output, stderr = start_sensor(tmp_path)
    try:
        result = rig.run(["/bin/sh", "-c", f"for i in {' '.join(['x'] * RUNS)}; do /bin/echo hi; done"])
        assert result.exit_code == 0 and result.stdout == "hi\n" * RUNS
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, open(stderr).read()

    marker = f"cgroup={result.cgroup_id} "
    lines = [line for line in stdout.splitlines() if marker in line]
    assert len(lines) == RUNS + 1, stdout
    assert lines[0].endswith(" /bin/sh") and all(line.endswith(" /bin/echo") for line in lines[1:])
    assert all(" exec " in line and " comm=echo " in line for line in lines[1:])

    with open(output, "rb") as f:
        records = [r for r in read_stream(f) if r.get("cgroup_id") == result.cgroup_id]
    assert [r["filename"] for r in records] == ["/bin/sh"] + ["/bin/echo"] * RUNS
    assert oct(os.stat(output).st_mode & 0o777) == "0o600"
    logs = [json.loads(line) for line in open(stderr)]
    assert {"rules loaded", "sensor started", "sensor stopped"} <= {e["event"] for e in logs}

"""A sink whose filesystem is full, under `mayfly run`: the sensor and the other sinks
go on, and the full one holds whole records only."""

import msgpack

from sensor import read_stream
from sensor.system import host
from sensor.testing.running import RunningSensor


def test_a_full_filesystem_under_one_sink_stops_neither_the_sensor_nor_the_other_sink(rig, tmp_path):
    tiny, roomy = tmp_path / "tiny", tmp_path / "roomy"
    tiny.mkdir()
    host.mount("tmpfs", str(tiny), options="size=64k")
    try:
        sensor = RunningSensor(tmp_path, "--emit-events", "--output", f"file:{tiny}/records.msgpack",
                               "--output", f"file:{roomy}/records.msgpack", "--report-interval", "3600")
        try:
            # A shell entrypoint doing ordinary work: far more than 64 KiB of records.
            result = rig.run(["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7; do /bin/ls -l /etc > /dev/null; done"])
            assert result.exit_code == 0
        finally:
            sensor.stop()  # raises unless the sensor exits 0
        with open(roomy / "records.msgpack", "rb") as f:
            kept = list(read_stream(f))
        with open(tiny / "records.msgpack", "rb") as f:
            partial = list(read_stream(f))  # raises on a torn record
    finally:
        host.umount(str(tiny))

    stopped = kept[-1]
    assert stopped["kind"] == "sensor" and stopped["state"] == "stopped"
    state = stopped["sinks"][f"file:{tiny}/records.msgpack"]
    assert state["failures"] > 0 and state["backlog"] > 0
    assert stopped["sinks"][f"file:{roomy}/records.msgpack"] == {"failures": 0, "dropped": 0, "backlog": 0}
    mine = [r for r in kept if r["kind"] == "event" and r["container"]["cgroup_id"] == result.cgroup_id]
    assert [r["evt"]["filename"] for r in mine if r["evt"]["type"] == "execve"][-7:] == ["/bin/ls"] * 7
    # What the full sink holds is whole, and the first records of the stream, in order.
    assert 0 < len(partial) < len(kept)
    assert [msgpack.packb(r) for r in partial] == [msgpack.packb(r) for r in kept[:len(partial)]]
    assert any(e["event"].startswith("sink failed") for e in sensor.logs())

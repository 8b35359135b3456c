"""A full ring buffer loses events, and the loss is itself a record: nothing goes silently."""

from sensor import ProgramConfig, Sensor

EXECS = 53  # prime, and far more exec events than one 4 KiB page holds


def test_ring_buffer_overflow_is_reported_as_loss(rig):
    seen = []
    with Sensor(config=ProgramConfig(ringbuf_pages=1), on_record=seen.append) as sensor:
        # Nothing polls while the container runs, so the one-page buffer overflows.
        result = rig.run(["/bin/sh", "-c", f"for i in {' '.join(['x'] * EXECS)}; do /bin/true; done"])
        while sensor.poll(0):
            pass
    delivered = [r for r in seen if r["kind"] == "exec" and r["cgroup_id"] == result.cgroup_id]
    losses = [r for r in seen if r["kind"] == "loss"]
    lost = sum(r["count"] for r in losses)
    assert 0 < len(delivered) < EXECS + 1
    assert lost >= EXECS + 1 - len(delivered)  # other host processes may have lost events too
    assert {r["reason"] for r in losses} == {"ring buffer full"}
    assert all({"v", "kind", "ts", "host"} <= r.keys() for r in losses)

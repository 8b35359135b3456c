"""Helpers for taking a test's records out of the session's Sensor."""


def drain(sensor):
    """Everything the kernel has committed (a finished container's events are all in)."""
    while sensor.poll(0):
        pass


def collect(sensor, cgroup_id):
    """Drain, then take (and forget) the records about that cgroup."""
    drain(sensor)
    mine = [r for r in sensor.seen if r.get("container", {}).get("cgroup_id") == cgroup_id]
    sensor.seen.clear()
    return mine

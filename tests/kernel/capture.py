"""Helpers for taking a test's records out of a Sensor, and for running processes in a
cgroup of their own (no container runtime's events mixed in)."""

import os
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager

from sensor.system import host


def drain(sensor, timeout=10.0):
    """Wait until everything the kernel has committed has been dispatched (a finished
    container's events are all in): by the session sensor's poller, or here for a
    sensor of the test's own."""
    if hasattr(sensor, "poller"):
        sensor.poller.sync(timeout)
        return
    deadline = time.monotonic() + timeout
    while sensor.poll(0) or not sensor.idle:
        if time.monotonic() > deadline:
            raise AssertionError(f"the sensor did not catch up within {timeout}s")


def collect(sensor, cgroup_id):
    """Drain, then take (and forget) the records about that cgroup."""
    drain(sensor)
    mine = [r for r in sensor.seen if r.get("container", {}).get("cgroup_id") == cgroup_id]
    sensor.seen.clear()
    return mine


@contextmanager
def own_cgroup():
    """A fresh cgroup2 directory; its id is the inode. Removed afterwards."""
    path = os.path.join(host.cgroup2_root(), f"mayfly-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path, host.cgroup_id(path)
    finally:
        os.rmdir(path)


def run_in_cgroup(cgroup_dir, argv):
    """Run argv with its process moved into the cgroup before it execs: everything it
    does, exec included, happens there and nothing else does. (The move writes to an fd
    the parent opened, so the child makes no open or close of its own in the cgroup.)"""
    procs = os.open(os.path.join(cgroup_dir, "cgroup.procs"), os.O_WRONLY)
    try:
        return subprocess.run(argv, preexec_fn=lambda: os.write(procs, str(os.getpid()).encode()),
                              capture_output=True, timeout=60)
    finally:
        os.close(procs)


def events(records, evt_type=None):
    return [r for r in records if r["kind"] == "event" and evt_type in (None, r["evt"]["type"])]


def run_fire(sensor, rig, fire, *args, **options):
    """Run fire in a container; the events it made (not runc's before it), and the run."""
    result = rig.run(["/usr/local/bin/fire", *map(str, args)], files={"/usr/local/bin/fire": fire}, **options)
    assert result.exit_code == 0, result.stderr
    records = [r for r in collect(sensor, result.cgroup_id) if r["kind"] == "event"]
    (start,) = [i for i, r in enumerate(records) if r["evt"].get("filename") == "/usr/local/bin/fire"]
    # runc's init runs as the same pid before it execs fire: keep what follows the exec.
    return records[start + 1:], result


class Poller(threading.Thread):
    """Polls the session's sensor all the time, as `mayfly run` does, so that containers'
    identities are read from their runtime's state while they live."""

    def __init__(self, sensor):
        super().__init__(name="sensor-poller", daemon=True)
        self.sensor = sensor
        self.polls = 0
        self.error: BaseException | None = None

    def run(self):
        try:
            while not self.sensor.stopped:
                self.sensor.poll(20)
                self.polls += 1
        except BaseException as e:  # surfaced by sync()
            self.error = e

    def sync(self, timeout: float = 10.0):
        """Wait until what the kernel committed before the call has been dispatched."""
        target, deadline = self.polls + 2, time.monotonic() + timeout
        while time.monotonic() < deadline and self.error is None:
            if self.polls >= target and self.sensor.idle:
                return
            time.sleep(0.005)
        raise AssertionError(f"the sensor did not catch up within {timeout}s") from self.error

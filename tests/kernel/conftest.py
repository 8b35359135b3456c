import socket
import threading
import time
from pathlib import Path

import pytest

from sensor import ProgramConfig, Sensor


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


@pytest.fixture(scope="package")  # this directory: stopped before the e2e tier runs
def sensor():
    """One Sensor for the tier, emitting every event, without rate limits (tests fire
    bursts), polled by a thread of its own. Tests take their records with `collect`,
    by cgroup id. Losses go out at every batch, for the tests that count them."""
    seen = []
    with Sensor(emit_events="all", config=ProgramConfig(cgroup_rate=0), on_record=seen.append,
                report_interval=3600, identity_deadline=0.5, lost_interval=0) as running:
        running.seen = seen
        running.poller = Poller(running)
        running.poller.start()
        yield running
        running.stop()
        running.poller.join()


@pytest.fixture(scope="session")
def fire(rig):
    """tests/kernel/fire.c, built static for the containers."""
    return rig.compile_static("fire", (Path(__file__).parent / "fire.c").read_text())


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield server
    server.close()

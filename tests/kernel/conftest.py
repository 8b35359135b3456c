import socket
from pathlib import Path

import pytest

from capture import Poller

from sensor import ProgramConfig, Sensor


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

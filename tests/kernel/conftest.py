from pathlib import Path

import pytest

from sensor import ProgramConfig, Sensor


@pytest.fixture(scope="session")
def sensor():
    """One Sensor for the tier, emitting every event, without rate limits (tests fire
    bursts). Tests take their records with `collect`, by cgroup id."""
    seen = []
    with Sensor(emit_events="all", config=ProgramConfig(cgroup_rate=0), on_record=seen.append,
                report_interval=3600) as running:
        running.seen = seen
        yield running


@pytest.fixture(scope="session")
def fire(rig):
    """tests/kernel/fire.c, built static for the containers."""
    return rig.compile_static("fire", (Path(__file__).parent / "fire.c").read_text())


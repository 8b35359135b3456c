import pytest

from sensor import Sensor


@pytest.fixture
def sensor():
    """A started Sensor with the real programs loaded; records accumulate in `sensor.seen`."""
    with Sensor() as running:
        running.seen = []
        running.on_record = running.seen.append
        yield running

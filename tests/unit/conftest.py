"""The rule matchers the unit tests run against: the reference evaluator and the
compiled engine, behind one interface, as msgpack-python's tests run both of its
implementations."""

import pytest

from sensor.detect.engine import Engine
from sensor.detect.evaluate import Reference

MATCHERS = {"reference": Reference, "engine": Engine}


@pytest.fixture(params=sorted(MATCHERS))
def matcher(request):
    """matcher(condition, record) -> whether it matches, through a fresh matcher."""
    build = MATCHERS[request.param]
    return lambda condition, record: build({"rule": condition}).match([record]) == [(0, "rule")]

"""What the benchmarks with runc containers under `mayfly run` share: a work directory,
the container rig, the stand-in for /etc/shadow, a sensor process per measurement, and
percentiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor.testing.containers import ContainerRig  # noqa: E402
from sensor.testing.running import RunningSensor  # noqa: E402

from report import SENSOR_CPU  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class ContainerBench:
    def __init__(self, name: str, quick: bool):
        self.quick = quick
        self.workdir = Path(f"/var/tmp/mayfly-{name}-bench")
        subprocess.run(["rm", "-rf", str(self.workdir)])
        self.workdir.mkdir(parents=True)
        self.rig = ContainerRig()
        self.shadow = self.workdir / "shadow"
        self.shadow.write_text("root:*:19000:0:99999:7:::\n")

    def sensor(self, name: str, *args: str) -> RunningSensor:
        """`mayfly run ARGS` on the sensor's CPU, its files in a directory of its own."""
        directory = self.workdir / name
        directory.mkdir()
        return RunningSensor(directory, "--report-interval", "3600", *args, cpu=SENSOR_CPU)

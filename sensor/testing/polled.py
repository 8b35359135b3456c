"""A Sensor in this process, polled by a thread of its own, every record kept: for tests
that act (start containers, wait for them) while the sensor runs."""

from __future__ import annotations

import threading

from sensor.sensor import Sensor


class PolledSensor:
    def __init__(self, **options):
        self.seen: list[dict] = []
        self.sensor = Sensor(on_record=self.seen.append, report_interval=3600, **options)
        self.sensor.start()
        self.thread = threading.Thread(target=self._poll, name="mayfly-test-poller", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.sensor.stopped:
            self.sensor.poll(5)

    def records(self, kind: str) -> list[dict]:
        return [r for r in self.seen if r["kind"] == kind]

    def close(self) -> None:
        self.sensor.stop()
        self.thread.join(10)
        self.sensor.close()

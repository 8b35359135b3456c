"""Kernel time (bpf_ktime_get_ns(), CLOCK_MONOTONIC) to wall-clock time."""

from __future__ import annotations

import time


class MonotonicClock:
    """Converts bpf_ktime_get_ns() (CLOCK_MONOTONIC) to ns since the epoch."""

    def __init__(self):
        self.offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def to_epoch(self, ktime_ns: int) -> int:
        return int(ktime_ns) + self.offset

    def now(self) -> int:
        return self.to_epoch(time.clock_gettime_ns(time.CLOCK_MONOTONIC))

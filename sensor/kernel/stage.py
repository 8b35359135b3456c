"""The kernel side's stages: drain the rings, then decode what they gave once, into
the arrays every later stage reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sensor.kernel.control import Kernel
from sensor.kernel.split import Splitter

if TYPE_CHECKING:
    from sensor.pipeline import Batch


class Drain:
    name = "drain"

    def __init__(self, kernel: Kernel):
        self.kernel = kernel

    def run(self, batch: Batch) -> None:
        batch.spilled = self.kernel.drain_spill()
        batch.raw = self.kernel.drain()


class Decode:
    """Splits the main ring's records, and merges in the spilled lifecycle events once
    the main ring has been read up to their time: a container's removal comes after
    its last events."""

    name = "decode"

    def __init__(self, kernel: Kernel, splitter: Splitter):
        self.kernel = kernel
        self.splitter = splitter
        self.spilled: list[tuple[str, np.ndarray]] = []  # spill ring events waiting for the main ring

    def run(self, batch: Batch) -> None:
        if batch.spilled is not None:
            # Copied out first: the main ring's split reuses the splitter's buffers.
            spilled, batch.unknown = self.splitter.split(batch.spilled)
            self.spilled += [(kind, events.copy()) for kind, groups in spilled.items() for events in groups]
        batch.arrays, unknown = self.splitter.split(batch.raw)
        batch.unknown += unknown
        self._release_spilled(batch.arrays)

    def _release_spilled(self, arrays: dict[str, list[np.ndarray]]) -> None:
        if not self.spilled:
            return
        drained = [events["hdr"]["ktime_ns"].max() for groups in arrays.values() for events in groups if len(events)]
        watermark = max(drained, default=0) if self.kernel.pending() else np.iinfo(np.uint64).max
        kept = []
        for kind, events in self.spilled:
            due = events["hdr"]["ktime_ns"] <= watermark
            if due.any():
                arrays.setdefault(kind, []).append(events[due])
            if not due.all():
                kept.append((kind, events[~due]))
        self.spilled = kept

"""Walking a split batch (structured arrays per event kind, grouped by record length)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def each(arrays: dict[str, list[np.ndarray]], kind: str) -> Iterator[np.void]:
    """Every event of one kind in a split batch."""
    for events in arrays.get(kind, ()):
        yield from events

"""Walking a split batch (structured arrays per event kind, grouped by record length)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def each(arrays: dict[str, list[np.ndarray]], kind: str) -> Iterator[np.void]:
    """Every event of one kind in a split batch."""
    for events in arrays.get(kind, ()):
        yield from events


def in_time_order(groups: list[np.ndarray]) -> Iterator[np.void]:
    """The events of several arrays (of any event dtypes) by kernel time, for state
    that depends on order: a fork before its child's exec, an open before its close."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return
    times = np.concatenate([g["hdr"]["ktime_ns"] for g in groups])
    which = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    rows = np.concatenate([np.arange(len(g)) for g in groups])
    for index in np.argsort(times, kind="stable"):
        yield groups[which[index]][rows[index]]

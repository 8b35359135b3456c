"""Walking a split batch (structured arrays per event kind, grouped by record length)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def each(arrays: dict[str, list[np.ndarray]], kind: str) -> Iterator[np.void]:
    """Every event of one kind in a split batch."""
    for events in arrays.get(kind, ()):
        yield from events


def time_order(groups: list[np.ndarray]) -> tuple[list[int], list[int]]:
    """The events of several arrays (of any event dtypes) by kernel time, as (array,
    row) index lists, for state that depends on order: a fork before its child's exec,
    an open before its close."""
    if not any(len(g) for g in groups):
        return [], []
    times = np.concatenate([g["hdr"]["ktime_ns"] for g in groups])
    which = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    rows = np.concatenate([np.arange(len(g)) for g in groups])
    order = np.argsort(times, kind="stable")
    return which[order].tolist(), rows[order].tolist()


def in_time_order(groups: list[np.ndarray]) -> Iterator[np.void]:
    """The events of several arrays in time order (time_order), one by one."""
    for which, row in zip(*time_order(groups)):
        yield groups[which][row]

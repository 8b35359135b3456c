"""Open-addressing hash tables in numpy arrays, for compiled (Numba) code: the rule
engine's part keys, a batch's fd notes by kernel time, and unique_inverse (a batch's
distinct pids).

A table is a uint64 array [capacity, 2 + extra]: slot s holds (key, value + 1, extra
columns...), and is empty while its value column is 0, so any key can be stored. A
key and what it gives sit side by side, read with one cache miss. Capacity is a power
of two; users keep tables at most half full. (Numba's typed dict takes several times
as long per lookup.)
"""

from __future__ import annotations

import numba
import numpy as np

from sensor.kernel.words import GOLDEN


def new(count: int, extra: int = 0) -> np.ndarray:
    """An empty table with room for `count` keys at most half full."""
    capacity = 16
    while capacity < 2 * count:
        capacity *= 2
    return np.zeros((capacity, 2 + extra), np.uint64)


@numba.njit(cache=True, nogil=True, inline="always")
def find(slots, key):
    """The slot that holds key, or the empty slot where it would go."""
    mask = np.uint64(slots.shape[0] - 1)
    h = key * GOLDEN
    at = (h ^ (h >> np.uint64(32))) & mask
    while slots[at, 1] and slots[at, 0] != key:
        at = (at + np.uint64(1)) & mask
    return at


@numba.njit(cache=True, nogil=True, inline="always")
def value(slots, at):
    """The value in slot `at` (found by find); -1 when it is empty."""
    return np.int64(slots[at, 1]) - 1


@numba.njit(cache=True, nogil=True, inline="always")
def put(slots, at, key, value):
    slots[at, 0] = key
    slots[at, 1] = np.uint64(value + 1)


def with_room(slots: np.ndarray, count: int) -> np.ndarray:
    """The table itself, or when `count` keys would fill it past half, a larger one
    holding the same keys, values and extra columns."""
    if 2 * count <= slots.shape[0]:
        return slots
    used = slots[slots[:, 1] > 0]
    grown = new(count, slots.shape[1] - 2)
    insert(grown, used[:, 0], used[:, 1].astype(np.int64) - 1, used[:, 2:])
    return grown


@numba.njit(cache=True, nogil=True)
def insert(slots, keys, values, extra):
    """keys[i] -> values[i], with the extra columns extra[i]."""
    for i in range(keys.shape[0]):
        at = find(slots, keys[i])
        put(slots, at, keys[i], values[i])
        slots[at, 2:] = extra[i]


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values in order of first appearance, each value's index in them):
    np.unique without its sort, for the few distinct pids of a batch's many rows."""
    return _unique_inverse(np.ascontiguousarray(values, np.uint64), new(len(values)))


@numba.njit(cache=True, nogil=True)
def _unique_inverse(values, seen):
    unique = np.empty(values.shape[0], np.uint64)
    inverse = np.empty(values.shape[0], np.int64)
    count = 0
    for i in range(values.shape[0]):
        at = find(seen, values[i])
        if value(seen, at) < 0:
            put(seen, at, values[i], count)
            unique[count] = values[i]
            count += 1
        inverse[i] = value(seen, at)
    return unique[:count], inverse

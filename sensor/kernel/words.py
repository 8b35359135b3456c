"""Drained events read as rows of 64-bit words in compiled (Numba) code: where a field
sits in them (derived from events.h's layout, checked at start-up), reading it, and
the hash that keys what was read. The rule engine's keys and the fd tables both read
events this way, without a Python value per event."""

from __future__ import annotations

import numba
import numpy as np

from sensor.kernel import layout

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: a multiplier that spreads bits


def groups(struct: np.dtype, base: int, names_per_group) -> np.ndarray:
    """(word index, mask) of the words holding each group of adjacent fields; the
    bytes past a group's last field (padding) are masked out."""
    words = []
    for names in names_per_group:
        at = base + struct.fields[names[0]][1]
        size = 0
        for name in names:
            if base + struct.fields[name][1] != at + size:
                raise layout.LayoutError(f"{', '.join(names)}: compiled readers hash them as adjacent fields")
            size += struct.fields[name][0].itemsize
        if at % 8:
            raise layout.LayoutError(f"{names[0]}: compiled readers read it as an 8-aligned word")
        for k in range(0, size, 8):
            words.append((at // 8 + k // 8, (1 << 8 * min(8, size - k)) - 1))
    return np.array(words, np.uint64)


def word(struct: np.dtype, name: str, base: int = 0) -> int:
    """The index of the 8-aligned word a field starts at."""
    return int(groups(struct, base, ((name,),))[0, 0])


def in_word(struct: np.dtype, name: str, base: int = 0) -> np.ndarray:
    """(byte offset, mask) of a field of at most 8 bytes, within one word."""
    at, size = base + struct.fields[name][1], struct.fields[name][0].itemsize
    if at // 8 != (at + size - 1) // 8:
        raise layout.LayoutError(f"{name}: compiled readers read it within one word")
    return np.array([at, (1 << 8 * size) - 1], np.uint64)


def as_words(events: np.ndarray) -> np.ndarray:
    """A structured array's rows as uint64 words (copied only if not contiguous)."""
    events = np.ascontiguousarray(events)
    return events.view(np.uint64).reshape(len(events), events.dtype.itemsize // 8)


@numba.njit(cache=True, nogil=True, inline="always")
def mix(h, value):
    h = (h ^ value) * GOLDEN
    return h ^ (h >> np.uint64(29))


@numba.njit(cache=True, nogil=True, inline="always")
def field(row, at):
    """A field (byte offset, mask: in_word) within one word of a row."""
    return (row[at[0] // np.uint64(8)] >> (np.uint64(8) * (at[0] % np.uint64(8)))) & at[1]


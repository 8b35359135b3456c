"""Drained ring-buffer records as numpy arrays per event kind: the one decode every
later stage reads (dtypes from ebpf/events.h)."""

from __future__ import annotations

import numpy as np

from sensor.kernel import layout
from sensor.kernel.ringbuf import RawBatch, group, scatter

Arrays = dict[str, list[np.ndarray]]  # evt kind -> structured arrays, one per record width


class Splitter:
    def __init__(self, events: layout.Layout | None = None):
        self.layout = events or layout.events()
        self.kinds = self.layout.kinds()
        self.dtypes = {number: self.layout.structs[f"mayfly_{name}_event"] for number, name in self.kinds.items()}
        # Buffers reused by every split (its arrays are views of them): grouping keys,
        # group counts (kind x row width in 8-byte units) and the grouped rows.
        self._itemsizes = np.zeros(max(self.kinds) + 1, np.int64)
        for number, dtype in self.dtypes.items():
            self._itemsizes[number] = dtype.itemsize
        self._counts = np.zeros((self._itemsizes.size, int(self._itemsizes.max()) // 8 + 1), np.int64)
        self._row_widths = np.arange(self._counts.shape[1], dtype=np.int64)[None, :] * 8
        self._keys = np.empty(0, np.int64)
        self._rows = np.empty(0, np.uint8)
        # Compiled (or loaded from Numba's cache) now, not at the first batch.
        self.split(RawBatch(np.zeros(8, np.uint8), np.zeros(1, np.uint64), np.zeros(1, np.uint32)))

    def split(self, batch: RawBatch) -> tuple[Arrays, int]:
        """The batch as structured arrays per event kind, and the number of records of
        kinds this side does not know (a kernel/user contract mismatch).

        Records come without their unused tail, so a kind's records are grouped by
        length: each array's rows are as wide as its records (a syscall with no string
        costs 136 bytes, not 904). The arrays live in buffers this splitter reuses: they
        are valid until the next split."""
        if not len(batch):
            return {}, 0
        n = len(batch)
        if self._keys.size < n:
            self._keys = np.empty(n, np.int64)
        keys = self._keys[:n]
        group(batch.buf, batch.offsets, batch.lengths, self._itemsizes, keys, self._counts)
        sizes = self._counts * self._row_widths
        cursor = np.zeros_like(sizes)
        cursor.reshape(-1)[1:] = np.cumsum(sizes.reshape(-1))[:-1]
        total = int(sizes.sum())
        if self._rows.size < total:
            self._rows = np.empty(total, np.uint8)
        starts = cursor.copy()
        scatter(batch.buf, batch.offsets, batch.lengths, keys, cursor, self._rows)
        arrays: Arrays = {}
        for kind, slot in zip(*np.nonzero(self._counts)):
            width = int(self._row_widths[0, slot])
            start = int(starts[kind, slot])
            rows = self._rows[start:start + int(sizes[kind, slot])]
            dtype = layout.truncate(self.dtypes[int(kind)], width)
            arrays.setdefault(self.kinds[int(kind)], []).append(rows.view(dtype))
        return arrays, int(np.count_nonzero(keys < 0))

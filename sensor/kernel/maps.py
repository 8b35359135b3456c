"""Bulk reads and writes of BPF maps as numpy arrays, with layouts from ebpf/events.h.

BCC's table objects convert entry by entry to ctypes; these helpers move whole maps
in one or a few bpf() calls instead.
"""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np


def _lib():
    from bcc.libbcc import lib
    return lib


def write_array(table, values: np.ndarray) -> None:
    """Write values[i] to index i of an array map (the dtype must match its value type)."""
    if values.dtype.itemsize != ctypes.sizeof(table.Leaf):
        raise ValueError(f"{values.dtype} is {values.dtype.itemsize} bytes; the map's value is "
                         f"{ctypes.sizeof(table.Leaf)}")
    for index, value in enumerate(values):
        table[table.Key(index)] = table.Leaf.from_buffer_copy(value.tobytes())


def read_all(table, key_dtype: np.dtype, value_dtype: np.dtype, percpu: bool = False,
             delete: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every entry of a hash map, read in batches (and deleted, with `delete`). Per-CPU
    maps give one row of values per CPU: values[i, cpu]. With `delete`, nothing is
    counted twice or missed: what the kernel adds meanwhile stays for the next call."""
    lib = _lib()
    batch = lib.bpf_lookup_and_delete_batch if delete else lib.bpf_lookup_batch
    ncpus = table.total_cpu if percpu else 1
    stride = (value_dtype.itemsize + 7) // 8 * 8 if percpu else value_dtype.itemsize
    capacity = table.max_entries
    keys = np.zeros(capacity * key_dtype.itemsize, np.uint8)
    values = np.zeros(capacity * stride * ncpus, np.uint8)
    token, count, total = ctypes.c_uint32(0), ctypes.c_uint32(0), 0
    while total < capacity:
        count.value = capacity - total
        result = batch(
            table.map_fd, ctypes.byref(token) if total else None, ctypes.byref(token),
            ctypes.c_void_p(keys.ctypes.data + total * key_dtype.itemsize),
            ctypes.c_void_p(values.ctypes.data + total * stride * ncpus), ctypes.byref(count))
        err = ctypes.get_errno()
        total += count.value
        if result != 0:
            if err == errno.ENOENT:
                break
            raise OSError(err, f"batch lookup of a BPF map failed: {os.strerror(err)}")
    keys = keys[:total * key_dtype.itemsize].view(key_dtype)
    rows = values[:total * stride * ncpus].reshape(total, ncpus, stride)[:, :, :value_dtype.itemsize]
    values = np.ascontiguousarray(rows).view(value_dtype).reshape(total, ncpus)
    return keys, (values if percpu else values[:, 0])

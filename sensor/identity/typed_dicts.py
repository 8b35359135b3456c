"""Numba typed dicts read from Python, through compiled and cached functions: a typed
dict's own methods, called from Python, are compiled anew in every process at their
first call, which can stall the sensor for a second. The fd and process tables keep
their state in such dicts."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def size(d):
    return len(d)


@numba.njit(cache=True, nogil=True)
def keys(d):
    result = np.empty(len(d), np.int64)
    i = 0
    for key in d.keys():
        result[i] = key
        i += 1
    return result


@numba.njit(cache=True, nogil=True)
def items(d):
    """(keys, values) of an int64 -> int64 dict."""
    found, values = np.empty(len(d), np.int64), np.empty(len(d), np.int64)
    i = 0
    for key, value in d.items():
        found[i], values[i] = key, value
        i += 1
    return found, values

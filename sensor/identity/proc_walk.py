"""The process table's compiled part: its entries as rows of numbers (parent, start,
image, serial, when last written) behind a pid -> row dict, and a batch's forks
and execs walked in time order in Numba. What an entry's process is (its name, exe,
command line and /proc details) is its image, interned by ProcessTable: a fork's child
gets its parent's, an exec a new one (made in Python beforehand: its arguments are
decoded and /proc read). The walk hands back to Python only for a fork by a parent the
table does not know (its name comes from the event's comm).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.typed import Dict

from sensor.kernel import words

# A row's columns.
PPID, START, IMAGE, SERIAL, STAMP, EXITED = range(6)
NO_START = -1
# The walk's counters (an int64 array it updates in place).
SERIALS, CLOCK, FREE = range(3)
# Where the order's events come from.
FORKS, EXECS = range(2)
# Why a walk stopped.
DONE, UNKNOWN_PARENT = range(2)


def new_state(rows: int):
    """(pid -> row, pid -> entries naming it as parent, the rows, the free rows' stack)."""
    free = np.arange(rows - 1, -1, -1, dtype=np.int64)
    return (Dict.empty(types.int64, types.int64), Dict.empty(types.int64, types.int64),
            np.zeros((rows, EXITED + 1), np.int64), free)


def grown(state: np.ndarray, free: np.ndarray, counters: np.ndarray, room: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows and free stack with at least `room` free rows."""
    if counters[FREE] >= room:
        return state, free
    old = len(state)
    size = max(2 * old, old + room)
    bigger = np.zeros((size, EXITED + 1), np.int64)
    bigger[:old] = state
    stack = np.empty(size, np.int64)
    stack[:counters[FREE]] = free[:counters[FREE]]
    added = np.arange(size - 1, old - 1, -1, dtype=np.int64)
    stack[counters[FREE]:counters[FREE] + len(added)] = added
    counters[FREE] += len(added)
    return bigger, stack


@numba.njit(cache=True, nogil=True)
def put(rows, children, state, free, counters, pid, ppid, start, image):
    """An entry for pid, new or replacing its old one; the caller leaves a free row."""
    if pid in rows:
        r = rows[pid]
        _release_child(children, state[r, PPID])
    else:
        counters[FREE] -= 1
        r = free[counters[FREE]]
        rows[pid] = r
    counters[SERIALS] += 1
    counters[CLOCK] += 1
    state[r, PPID], state[r, START], state[r, IMAGE] = ppid, start, image
    state[r, SERIAL], state[r, STAMP], state[r, EXITED] = counters[SERIALS], counters[CLOCK], 0
    children[ppid] = children[ppid] + 1 if ppid in children else 1


@numba.njit(cache=True, nogil=True, inline="always")
def _release_child(children, ppid):
    if ppid in children:
        if children[ppid] <= 1:
            del children[ppid]
        else:
            children[ppid] -= 1


@numba.njit(cache=True, nogil=True)
def remove(rows, children, state, free, counters, pid):
    """Drop pid's entry; its parent's pid."""
    r = rows[pid]
    del rows[pid]
    _release_child(children, state[r, PPID])
    free[counters[FREE]] = r
    counters[FREE] += 1
    return state[r, PPID]


@numba.njit(cache=True, nogil=True)
def walk(position, rows, children, state, free, counters, order_code, order_row, fork_parent, fork_child,
         fork_ktime, clock_offset, exec_pid, exec_ppid, exec_image):
    """Apply the ordered forks and execs from `position` on; (where it stopped, why).
    An exec's process keeps its parent and start, and takes its new image."""
    while position < order_code.shape[0]:
        r = order_row[position]
        if order_code[position] == EXECS:
            pid = exec_pid[r]
            if pid in rows:
                known = rows[pid]
                ppid, start = state[known, PPID], state[known, START]
            else:
                ppid, start = exec_ppid[r], np.int64(NO_START)
            put(rows, children, state, free, counters, pid, ppid, start, exec_image[r])
        else:
            parent = fork_parent[r]
            if parent not in rows:
                return position, UNKNOWN_PARENT
            put(rows, children, state, free, counters, fork_child[r], parent, fork_ktime[r] + clock_offset,
                state[rows[parent], IMAGE])
        position += 1
    return position, DONE


@numba.njit(cache=True, nogil=True)
def retire(rows, children, state, free, counters, pids, serials):
    """Drop the processes that exited in the last batch (its records are made by now),
    and each gone ancestor that no entry names as its parent any more. (pids, serials):
    the exits and the serials their entries had then: a reused pid is not retired."""
    for i in range(pids.shape[0]):
        pid = pids[i]
        if pid in rows and state[rows[pid], SERIAL] == serials[i]:
            state[rows[pid], EXITED] = 1
        while pid in rows and state[rows[pid], EXITED] and pid not in children:
            pid = remove(rows, children, state, free, counters, pid)


@numba.njit(cache=True, nogil=True)
def serials_of(rows, state, pids):
    """Each pid's entry's serial (0: none)."""
    result = np.zeros(pids.shape[0], np.int64)
    for i in range(pids.shape[0]):
        if pids[i] in rows:
            result[i] = state[rows[pids[i]], SERIAL]
    return result


@numba.njit(cache=True, nogil=True)
def evict(rows, children, state, free, counters, keep):
    """The least recently written entries dropped, down to `keep`."""
    count = len(rows)
    if count <= keep:
        return
    pids = np.empty(count, np.int64)
    stamps = np.empty(count, np.int64)
    i = 0
    for pid, r in rows.items():
        pids[i], stamps[i] = pid, state[r, STAMP]
        i += 1
    for k in np.argsort(stamps)[:count - keep]:
        remove(rows, children, state, free, counters, pids[k])


@numba.njit(cache=True, nogil=True)
def row_of(rows, pid):
    """The row of pid's entry (-1: none)."""
    return rows[pid] if pid in rows else -1


@numba.njit(cache=True, nogil=True)
def versions(rows, state, pids, ancestors):
    """Per pid, a number that changes whenever what ProcessTable.get(pid) gives may: a
    hash of the serials of the entries it reads (the process's and its ancestors'). A
    cycle of parent links only repeats serials: the walk is bounded anyway."""
    result = np.empty(pids.shape[0], np.uint64)
    for i in range(pids.shape[0]):
        h = np.uint64(0x9E0C)
        at = pids[i]
        for _ in range(ancestors + 1):
            if at not in rows:
                h = words.mix(h, np.uint64(0))
                break
            r = rows[at]
            h = words.mix(h, np.uint64(state[r, SERIAL]))
            at = state[r, PPID]
        result[i] = h
    return result


@numba.njit(cache=True, nogil=True)
def renumber_images(rows, state, count):
    """Images renumbered to those entries name, in order: (old id of each new one)."""
    used = np.zeros(count, np.bool_)
    for r in rows.values():
        used[state[r, IMAGE]] = True
    kept = np.flatnonzero(used)
    new_ids = np.full(count, -1, np.int64)
    new_ids[kept] = np.arange(kept.shape[0])
    for r in rows.values():
        state[r, IMAGE] = new_ids[state[r, IMAGE]]
    return kept

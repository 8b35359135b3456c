"""uid and gid to names as a process sees them: its own root's /etc/passwd and
/etc/group (a container's, through /proc/<pid>/root), cached per container.

Those files belong to the container and may be hostile: they are opened with
openat2(RESOLVE_IN_ROOT), so that a symlink in the container cannot lead to a host
file, must be regular files, and are read up to MAX_BYTES.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import stat
import time
from collections import OrderedDict

from sensor.kernel import syscalls
from sensor.system import uapi

MAX_BYTES = 1 << 20
REFRESH_S = 5.0  # an unknown id makes a root's files be read again, at most this often


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def read_in_root(root: str, path: str) -> bytes | None:
    """A regular file below `root`, resolved as if `root` were / (None if it cannot be)."""
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        resolve = uapi.resolve_flags()
        how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, 0,
                       resolve["RESOLVE_IN_ROOT"] | resolve["RESOLVE_NO_MAGICLINKS"])
        fd = _libc.syscall(syscalls.table().numbers["openat2"], root_fd, path.encode(), ctypes.byref(how),
                           ctypes.sizeof(how))
        if fd < 0:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read(MAX_BYTES)
    finally:
        os.close(root_fd)


def parse_ids(text: bytes) -> dict[int, str]:
    """passwd or group lines: name:x:id:... -> {id: name} (the first name of an id wins)."""
    names: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split(b":")
        if len(parts) > 2 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0].decode("utf-8", "replace"))
    return names


class Users:
    def __init__(self, capacity: int = 256, root_of=lambda pid: f"/proc/{pid}/root"):
        self.capacity = capacity
        self.root_of = root_of  # a pid's root directory
        # key -> (when read, uid names, gid names, a serial new at each read)
        self._roots: OrderedDict[str, tuple[float, dict[int, str], dict[int, str], int]] = OrderedDict()
        self._serial = itertools.count(1)

    def names(self, key: str, pid: int, uid: int, gid: int) -> tuple[str | None, str | None]:
        """(user name, group name) of uid and gid in the root of `pid`, which belongs to
        `key` (its container id; the host's processes share one)."""
        entry = self._roots.get(key)
        if entry is None or ((uid not in entry[1] or gid not in entry[2]) and time.monotonic() - entry[0] > REFRESH_S):
            root = self.root_of(pid)
            passwd, group = read_in_root(root, "etc/passwd"), read_in_root(root, "etc/group")
            if passwd is None and group is None and entry is None:
                return None, None  # gone already, or no such files: look again next time
            entry = (time.monotonic(), parse_ids(passwd or b""), parse_ids(group or b""), next(self._serial))
            self._roots[key] = entry
            while len(self._roots) > self.capacity:
                self._roots.popitem(last=False)
        self._roots.move_to_end(key)
        return entry[1].get(uid), entry[2].get(gid)

    def version(self, key: str) -> int:
        """A number that changes whenever the names known for `key` may (0: none known)."""
        entry = self._roots.get(key)
        return entry[3] if entry else 0

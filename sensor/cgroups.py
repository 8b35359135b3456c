"""cgroup2 ids to paths, and the container a cgroup stands for.

An id is the inode of the cgroup's directory. The table is filled by a scan of the
cgroup2 mount at start and kept by the kernel's cgroup_mkdir/rmdir events. Until
container resolution lands (runtimes, images, labels), a container is named by its
cgroup path's last component, and the root cgroup is the host.
"""

from __future__ import annotations

import os

from collections import OrderedDict

from sensor.log import get_logger

log = get_logger("cgroups")

HOST = "host"
# Removed cgroups keep their name this long (in removals), for records that come late.
REMEMBER_REMOVED = 4096


class CgroupTable:
    def __init__(self, root: str):
        self.root = root
        self.paths: dict[int, str] = {}
        self._removed: OrderedDict[int, str] = OrderedDict()

    def scan(self) -> None:
        """Record every cgroup that exists now (those made later come as events)."""
        for directory, _, _ in os.walk(self.root, onerror=lambda e: log.warning("cannot scan", error=str(e))):
            relative = os.path.relpath(directory, self.root)
            try:
                self.paths[os.stat(directory).st_ino] = "/" if relative == "." else "/" + relative
            except OSError:
                continue  # removed while we walked

    def made(self, cgroup_id: int, path: str) -> None:
        self.paths[cgroup_id] = path

    def removed(self, cgroup_id: int) -> None:
        path = self.paths.pop(cgroup_id, None)
        if path is not None:
            self._removed[cgroup_id] = path
            while len(self._removed) > REMEMBER_REMOVED:
                self._removed.popitem(last=False)

    def container(self, cgroup_id: int) -> dict:
        path = self.paths.get(cgroup_id) or self._removed.get(cgroup_id)
        if path is None:
            return {"id": f"cgroup-{cgroup_id}", "cgroup_id": cgroup_id}
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return {"id": name or HOST, "cgroup_id": cgroup_id}

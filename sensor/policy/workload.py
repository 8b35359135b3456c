"""What a workload is: the containers that count as one for budgets, the last-instance
guard and `host.running`. By image (its name without the tag or digest), or by a label;
a container with neither is a workload of its own."""

from __future__ import annotations

import os


def workload_of(container: dict, by: str) -> str:
    """`by`: "image", or "label[KEY]" (sensor.policy.policy_file.Settings.workload)."""
    if by.startswith("label["):
        value = (container.get("labels") or {}).get(by[len("label["):-1])
        if value:
            return f"{by}={value}"
    repository = (container.get("image") or {}).get("repository")
    if repository:
        return repository
    return f"container:{container.get('id')}"


def running(cgroups, workload: str, by: str) -> int:
    """Containers of the workload running on this host: in the cgroup table, with a
    process in their cgroup (an exited container's cgroup stays until it is deleted)."""
    return sum(1 for cgroup_id, entry in cgroups.entries.items() if entry.identity.is_container and entry.removed_ns is None
               and workload_of(entry.container, by) == workload and _populated(cgroups.directory(cgroup_id)))


def _populated(cgroup_dir: str | None) -> bool:
    if cgroup_dir is None:
        return False
    try:
        with open(os.path.join(cgroup_dir, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except OSError:
        return False

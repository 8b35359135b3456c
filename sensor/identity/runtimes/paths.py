"""Which container a cgroup path names, as far as the path tells (cgroup v1 or v2
forms, each runtime's naming as the package docstring lists), before any state is read."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX_ID = r"[0-9a-f]{64}"
# (runtime, pattern on one path component) in order; the id is group "id".
_COMPONENT_PATTERNS = [
    ("docker", re.compile(rf"docker-(?P<id>{_HEX_ID})\.scope")),
    ("containerd", re.compile(rf"cri-containerd-(?P<id>{_HEX_ID})\.scope")),
    ("cri-o", re.compile(rf"crio-(?P<id>{_HEX_ID})(\.scope)?")),
    ("podman", re.compile(rf"libpod-(?P<id>{_HEX_ID})(\.scope)?")),
    ("runc", re.compile(r"runc-(?P<id>[\w+.-]+)\.scope")),
]
_CONMON = re.compile(r"(crio|libpod)-conmon-")
# kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice (Guaranteed), pod<uid> (cgroupfs)
_POD = re.compile(r"(?:kubepods(?:-\w+)?-)?pod(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}"
                  r"[-_][0-9a-f]{12})(?:\.slice)?")


_SYSTEMD_UNIT = re.compile(r".+\.(service|slice|scope|mount|socket|swap|target|device|automount|path|timer)")


# Cgroups runtimes make to hold their containers (the containers are below them).
_RUNTIME_PARENTS = {"docker", "libpod_parent", "kubepods", "besteffort", "burstable", "guaranteed", "machine",
                    "lxc", "podruntime", "runtime"}


def is_host_cgroup(path: str) -> bool:
    """The root, systemd units and runtimes' parent cgroups (a Kubernetes pod's too)
    that no container pattern matched: never a container."""
    parts = [p for p in path.split("/") if p and p != "container"]
    if not parts or parts[-1] in (".", ".."):
        return True
    last = parts[-1]
    return parse_cgroup_path(path) is None and (
        bool(_SYSTEMD_UNIT.fullmatch(last)) or last in _RUNTIME_PARENTS or bool(_POD.fullmatch(last)))


@dataclass(frozen=True)
class PathMatch:
    runtime: str | None   # None: any runtime's (a bare id in a pod cgroup), or runc's default /<id>
    id: str
    pod_uid: str | None


def parse_cgroup_path(path: str) -> PathMatch | None:
    """The container a cgroup path names, as far as the path tells (v1 or v2 forms);
    None for a path that names no container by pattern (it may still be runc's)."""
    parts = [p for p in path.split("/") if p]
    pod_uid = None
    for part in parts:
        pod = _POD.fullmatch(part)
        if pod:
            pod_uid = pod.group("uid").replace("_", "-")  # systemd slices escape '-' as '_'
    # podman puts the container's processes in a `container` child of its scope
    while parts and parts[-1] == "container":
        parts.pop()
    if not parts or _CONMON.match(parts[-1]):
        return None
    last = parts[-1]
    for runtime, pattern in _COMPONENT_PATTERNS:
        match = pattern.fullmatch(last)
        if match:
            return PathMatch(runtime, match.group("id"), pod_uid)
    if len(parts) >= 2 and parts[-2] in ("docker", "libpod_parent") and re.fullmatch(_HEX_ID, last):
        return PathMatch("docker" if parts[-2] == "docker" else "podman", last, pod_uid)
    if pod_uid and re.fullmatch(_HEX_ID, last):
        return PathMatch(None, last, pod_uid)  # cgroupfs driver: containerd or dockershim
    return None

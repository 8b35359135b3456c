"""A cgroup path to its identity: the path's pattern names the runtime (or several
that could be), and that runtime's reader fills in the rest from its state."""

from __future__ import annotations

from sensor.identity.runtimes import containerd, crio, docker, podman, runc
from sensor.identity.runtimes.paths import is_host_cgroup, parse_cgroup_path
from sensor.identity.runtimes.state import Identity, StateReader

# A bare id in a Kubernetes pod cgroup (cgroupfs driver) may be any CRI runtime's.
_POD_RUNTIMES = ("containerd", "cri-o", "docker")


class Resolver:
    """Resolves cgroup paths to identities from state under `root`."""

    def __init__(self, root: str = "/"):
        self.state = StateReader(root)
        self._readers = {"docker": docker.identity, "containerd": containerd.identity, "cri-o": crio.identity,
                         "podman": podman.identity, "runc": lambda state, cid: runc.identity(state, cid, None)}

    def resolve(self, cgroup_path: str) -> Identity:
        """The identity of a cgroup. Host for the root and systemd units that name no
        container; a container with resolved=False when its runtime's state is not
        readable (yet): one whose path names it by pattern, or any other cgroup, which
        may be a runc container (runc's default cgroup is /<id>)."""
        last = cgroup_path.rstrip("/").rsplit("/", 1)[-1]
        match = parse_cgroup_path(cgroup_path)
        if match is None:
            if is_host_cgroup(cgroup_path):
                return Identity()
            return runc.identity(self.state, last, cgroup_path) or Identity(id=last, resolved=False)
        for runtime in [match.runtime] if match.runtime else _POD_RUNTIMES:
            identity = self._readers[runtime](self.state, match.id)
            if identity:
                if match.pod_uid and not identity.k8s.get("pod", {}).get("uid"):
                    identity.k8s.setdefault("pod", {})["uid"] = match.pod_uid
                return identity
        identity = Identity(id=match.id, runtime=match.runtime, resolved=False)
        if match.pod_uid:
            identity.k8s = {"pod": {"uid": match.pod_uid}}
        return identity

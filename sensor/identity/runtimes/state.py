"""What every runtime's reader shares: the identity a cgroup resolves to, and safe
reads of a runtime's JSON state (bounded, no symlink leading out, warned once)."""

from __future__ import annotations

import json
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass, field

from sensor.log import get_logger

log = get_logger("runtimes")

HOST = "host"
# State files larger than this are not read (a hostile or corrupt one).
MAX_STATE_BYTES = 4 << 20
# Longest label or annotation value kept; longer ones are cut and marked.
MAX_VALUE_LEN = 4096
MAX_LABELS = 256


@dataclass
class Identity:
    """What a cgroup is. `id` is the container id, or "host"."""
    id: str = HOST
    runtime: str | None = None
    name: str | None = None
    image: dict = field(default_factory=dict)       # name, repository, tag, digest, id
    labels: dict = field(default_factory=dict)      # labels and annotations
    k8s: dict = field(default_factory=dict)         # pod {name, namespace, uid}, container
    created: str | None = None
    privileged: bool | None = None                  # CAP_SYS_ADMIN in its bounding set (Docker: --privileged)
    capabilities: list = field(default_factory=list)  # its bounding set, from its OCI spec
    host_mounts: list = field(default_factory=list)   # the host paths bind-mounted into it
    user: int | None = None                         # the uid its process runs as
    resolved: bool = True                           # False: the runtime's state was not (yet) readable

    @property
    def is_container(self) -> bool:
        return self.id != HOST

    def as_record(self) -> dict:
        """The `container` map of records (without cgroup fields)."""
        result: dict = {"id": self.id}
        for name in ("runtime", "name", "image", "labels", "k8s", "created", "capabilities", "host_mounts"):
            value = getattr(self, name)
            if value:
                result[name] = value
        if self.privileged is not None:
            result["privileged"] = self.privileged
        if self.user is not None:
            result["user"] = self.user
        if not self.resolved:
            result["resolved"] = False
        return result


def parse_image(reference: str | None) -> dict:
    """registry/repository[:tag][@digest] split as Falco's container.image.* fields are."""
    if not reference:
        return {}
    result = {"name": reference}
    rest = reference
    if "@" in rest:
        rest, result["digest"] = rest.split("@", 1)
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, result["tag"] = rest[:colon], rest[colon + 1:]
    result["repository"] = rest
    return result


class StateError(Exception):
    """A state file that exists but cannot be used; the message says why."""


def read_json(path: str):
    """A runtime's JSON state file: None if absent; StateError if unusable (not a
    regular file, a symlink leading out, too large, invalid)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"{path}: cannot open: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path}: not a regular file")
        if info.st_size > MAX_STATE_BYTES:
            raise StateError(f"{path}: {info.st_size} bytes, more than the {MAX_STATE_BYTES} read")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_STATE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateError(f"{path}: invalid JSON: {e}") from None


def bounded(mapping) -> dict:
    """Labels or annotations as str -> str, bounded in number and length."""
    if not isinstance(mapping, dict):
        return {}
    result = {}
    for key, value in list(mapping.items())[:MAX_LABELS]:
        key, value = str(key)[:MAX_VALUE_LEN], str(value)
        result[key] = value if len(value) <= MAX_VALUE_LEN else value[:MAX_VALUE_LEN] + "...[cut]"
    return result


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def as_str(value) -> str | None:
    return value if isinstance(value, str) and value else None


class StateReader:
    """Reads runtimes' JSON state under `root` (a filesystem root, "/" on a host)."""

    def __init__(self, root: str = "/"):
        self.root = root
        self._warned: OrderedDict[str, None] = OrderedDict()  # said once, not at every retry

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def read(self, base: str, *parts: str):
        """JSON state at base/parts (base relative to root), or None when absent or
        unusable (logged). It must resolve inside base: a symlink that leads out of a
        runtime's state directory is refused."""
        base = self.path(base)
        path = os.path.join(base, *parts)
        try:
            real_base = os.path.realpath(base)
            if os.path.commonpath([real_base, os.path.realpath(path)]) != real_base:
                raise StateError(f"{path}: resolves outside {base}")
            return read_json(path)
        except StateError as e:
            if str(e) not in self._warned:
                log.warning("unusable runtime state", error=str(e))
                self._warned[str(e)] = None
                if len(self._warned) > 1024:
                    self._warned.popitem(last=False)
            return None


def privileged(bounding) -> bool | None:
    """Whether a capability list grants CAP_SYS_ADMIN: what the escapes Falco's rules
    watch for need, and what Docker's --privileged gives (with everything else)."""
    return "CAP_SYS_ADMIN" in bounding if isinstance(bounding, list) else None


def spec_privileged(spec) -> bool | None:
    """privileged() of an OCI runtime spec (config.json)."""
    return privileged(as_dict(as_dict(as_dict(spec).get("process")).get("capabilities")).get("bounding"))


def apply_spec(identity: Identity, spec) -> None:
    """What an OCI runtime spec (config.json) says of a container's rights: its
    capabilities, the host paths bind-mounted into it, its user, whether privileged."""
    process = as_dict(as_dict(spec).get("process"))
    bounding = as_dict(process.get("capabilities")).get("bounding")
    if isinstance(bounding, list):
        identity.capabilities = [str(c) for c in bounding[:64]]
        identity.privileged = privileged(bounding)
    mounts = as_dict(spec).get("mounts")
    identity.host_mounts = [str(m["source"])[:MAX_VALUE_LEN] for m in (mounts if isinstance(mounts, list) else [])
                            if isinstance(m, dict) and isinstance(m.get("source"), str)
                            and (m.get("type") == "bind" or "bind" in (m.get("options") or ())
                                 or "rbind" in (m.get("options") or ()))][:MAX_LABELS]
    uid = as_dict(process.get("user")).get("uid")
    identity.user = uid if isinstance(uid, int) else None


# Kubernetes metadata in annotations (CRI runtimes) or labels (dockershim, CRI-O).
_K8S_KEYS = {
    "pod_name": ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
    "pod_namespace": ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"),
    "pod_uid": ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"),
    "container": ("io.kubernetes.cri.container-name", "io.kubernetes.container.name"),
    "image": ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"),
    "name": ("io.kubernetes.cri-o.Name", "nerdctl/name"),
}


def apply_annotations(identity: Identity, annotations: dict) -> None:
    def first(key: str) -> str | None:
        return next((annotations[k] for k in _K8S_KEYS[key] if annotations.get(k)), None)

    pod = {k: v for k, v in (("name", first("pod_name")), ("namespace", first("pod_namespace")),
                             ("uid", first("pod_uid"))) if v}
    if pod:
        identity.k8s["pod"] = pod
    if first("container"):
        identity.k8s["container"] = first("container")
    if first("image") and not identity.image:
        identity.image = parse_image(first("image"))
    if first("name") and not identity.name:
        identity.name = first("name")
    if identity.name is None and identity.k8s.get("container"):
        identity.name = identity.k8s["container"]

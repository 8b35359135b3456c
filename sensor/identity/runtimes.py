"""Which container a cgroup stands for: its runtime and id from the cgroup path, then
names, image, labels and Kubernetes metadata from the runtime's on-disk state.

On-disk state needs no daemon and is written before a container's first exec. Every
path read is under `root` (a filesystem root, "/" on a host), so that tests can lay out
each runtime's state in a directory. Layouts, as the runtimes document and write them:

- Docker: cgroup `/docker/<id>` (cgroupfs driver) or `docker-<id>.scope` (systemd);
  state `/var/lib/docker/containers/<id>/config.v2.json`.
- containerd (CRI, namespace k8s.io): `cri-containerd-<id>.scope`, or `<id>` in a
  kubepods pod cgroup; the task bundle's OCI `config.json` under
  `/run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/`, whose annotations
  `io.kubernetes.cri.*` name the pod and the image.
- CRI-O: `crio-<id>.scope` or `crio-<id>`; `userdata/config.json` under
  `/run/containers/storage/overlay-containers/<id>/` (or /var/lib/...), annotations
  `io.kubernetes.*` and `io.kubernetes.cri-o.*`.
- Podman (libpod): `libpod-<id>.scope` (possibly with a `container` child cgroup) or
  `libpod_parent/libpod-<id>`; names and images in containers/storage's
  `overlay-containers/containers.json` and `overlay-images/images.json`.
- runc (standalone, or under any of the above): `<runc root>/<id>/state.json`, whose
  `cgroup_paths` give the cgroup and whose `config.labels` hold the OCI bundle's
  annotations as `key=value` (and `bundle=<path>`). runc's default cgroup is `/<id>`,
  so any path may be runc's.

conmon's cgroups (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) are the
runtime's, not the container's: they are host.
"""

from __future__ import annotations

import json
import os
import re
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

RUNC_ROOTS = ("run/runc", "run/docker/runtime-runc/moby", "run/containerd/runc/k8s.io",
              "run/containerd/runc/default", "run/crun")
CONTAINERD_TASKS = "run/containerd/io.containerd.runtime.v2.task"
CONTAINERS_STORAGE = ("run/containers/storage", "var/lib/containers/storage")

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
    resolved: bool = True                           # False: the runtime's state was not (yet) readable

    @property
    def is_container(self) -> bool:
        return self.id != HOST

    def as_record(self) -> dict:
        """The `container` map of records (without cgroup fields)."""
        result: dict = {"id": self.id}
        for name in ("runtime", "name", "image", "labels", "k8s", "created"):
            value = getattr(self, name)
            if value:
                result[name] = value
        if self.privileged is not None:
            result["privileged"] = self.privileged
        if not self.resolved:
            result["resolved"] = False
        return result


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


def _bounded(mapping) -> dict:
    """Labels or annotations as str -> str, bounded in number and length."""
    if not isinstance(mapping, dict):
        return {}
    result = {}
    for key, value in list(mapping.items())[:MAX_LABELS]:
        key, value = str(key)[:MAX_VALUE_LEN], str(value)
        result[key] = value if len(value) <= MAX_VALUE_LEN else value[:MAX_VALUE_LEN] + "...[cut]"
    return result


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _str(value) -> str | None:
    return value if isinstance(value, str) and value else None


class Resolver:
    """Resolves cgroup paths to identities from state under `root`."""

    def __init__(self, root: str = "/"):
        self.root = root
        self._warned: OrderedDict[str, None] = OrderedDict()  # said once, not at every retry

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _read(self, base: str, *parts: str):
        """JSON state at base/parts (base relative to root), or None when absent or
        unusable (logged). It must resolve inside base: a symlink that leads out of a
        runtime's state directory is refused."""
        base = self._path(base)
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
            return self._runc(last, cgroup_path) or Identity(id=last, resolved=False)
        readers = {"docker": self._docker, "containerd": self._containerd, "cri-o": self._crio,
                   "podman": self._podman, "runc": lambda cid: self._runc(cid, None)}
        order = [match.runtime] if match.runtime else ["containerd", "cri-o", "docker"]
        for runtime in order:
            identity = readers[runtime](match.id)
            if identity:
                if match.pod_uid and not identity.k8s.get("pod", {}).get("uid"):
                    identity.k8s.setdefault("pod", {})["uid"] = match.pod_uid
                return identity
        identity = Identity(id=match.id, runtime=match.runtime, resolved=False)
        if match.pod_uid:
            identity.k8s = {"pod": {"uid": match.pod_uid}}
        return identity

    # ---- runc (and the OCI bundle it names) ----

    def _runc(self, container_id: str, cgroup_path: str | None) -> Identity | None:
        if not container_id or container_id in (".", "..") or "/" in container_id:
            return None
        for runc_root in RUNC_ROOTS:
            state = self._read(runc_root, container_id, "state.json")
            if not isinstance(state, dict):
                continue
            if cgroup_path is not None and not _cgroup_matches(state, cgroup_path):
                continue  # a runc container of that name, but in another cgroup
            # runc records the bundle's annotations as key=value labels, and the bundle itself
            config = _dict(state.get("config"))
            pairs = [str(x).partition("=") for x in config.get("labels") or [] if isinstance(x, str)]
            annotations = _bounded({k: v for k, sep, v in pairs if sep and k != "bundle"})
            identity = Identity(id=container_id, runtime="runc", labels=annotations,
                                created=_str(state.get("created")),
                                privileged=_privileged(_dict(config.get("capabilities")).get("Bounding")))
            _apply_annotations(identity, annotations)
            return identity
        return None

    # ---- Docker ----

    def _docker(self, container_id: str) -> Identity | None:
        config = self._read("var/lib/docker/containers", container_id, "config.v2.json")
        if not isinstance(config, dict):
            return None
        inner = _dict(config.get("Config"))
        identity = Identity(id=container_id, runtime="docker", name=(_str(config.get("Name")) or "").lstrip("/") or None,
                            image=parse_image(_str(inner.get("Image"))), labels=_bounded(inner.get("Labels")),
                            created=_str(config.get("Created")))
        if _str(config.get("Image")):
            identity.image["id"] = config["Image"]
        host_config = self._read("var/lib/docker/containers", container_id, "hostconfig.json")
        if isinstance(host_config, dict) and isinstance(host_config.get("Privileged"), bool):
            identity.privileged = host_config["Privileged"]
        _apply_annotations(identity, identity.labels)  # dockershim put k8s metadata in labels
        return identity

    # ---- containerd ----

    def _containerd(self, container_id: str) -> Identity | None:
        try:
            namespaces = sorted(os.listdir(self._path(CONTAINERD_TASKS)))
        except OSError:
            return None
        for namespace in namespaces:
            spec = self._read(CONTAINERD_TASKS, namespace, container_id, "config.json")
            if isinstance(spec, dict):
                annotations = _bounded(spec.get("annotations"))
                identity = Identity(id=container_id, runtime="containerd", labels=annotations,
                                    privileged=_spec_privileged(spec))
                _apply_annotations(identity, annotations)
                identity.labels = {**annotations, "io.containerd.namespace": namespace} if namespace != "k8s.io" \
                    else annotations
                return identity
        return None

    # ---- CRI-O ----

    def _crio(self, container_id: str) -> Identity | None:
        for storage in CONTAINERS_STORAGE:
            spec = self._read(storage, "overlay-containers", container_id, "userdata", "config.json")
            if isinstance(spec, dict):
                annotations = _bounded(spec.get("annotations"))
                if annotations.get("io.container.manager") == "libpod":
                    continue  # podman keeps its containers in the same storage (with some cri-o keys)
                identity = Identity(id=container_id, runtime="cri-o", labels=annotations,
                                    privileged=_spec_privileged(spec))
                _apply_annotations(identity, annotations)
                return identity
        return None

    # ---- Podman ----

    def _podman(self, container_id: str) -> Identity | None:
        for storage in CONTAINERS_STORAGE[::-1]:
            containers = self._read(storage, "overlay-containers", "containers.json")
            if not isinstance(containers, list):
                continue
            entry = next((c for c in containers if isinstance(c, dict) and c.get("id") == container_id), None)
            if entry is None:
                continue
            names = [n for n in entry.get("names") or [] if isinstance(n, str)]
            identity = Identity(id=container_id, runtime="podman", name=names[0] if names else None,
                                created=_str(entry.get("created")))
            image_id = _str(entry.get("image"))
            if image_id:
                identity.image = self._podman_image(storage, image_id)
            spec = self._read(storage, "overlay-containers", container_id, "userdata", "config.json")
            identity.labels = _bounded(_dict(spec).get("annotations"))
            identity.privileged = _spec_privileged(spec)
            return identity
        return None

    def _podman_image(self, storage: str, image_id: str) -> dict:
        images = self._read(storage, "overlay-images", "images.json")
        entry = next((i for i in images if isinstance(i, dict) and i.get("id") == image_id), None) \
            if isinstance(images, list) else None
        names = [n for n in (entry or {}).get("names") or [] if isinstance(n, str)]
        image = parse_image(names[0]) if names else {}
        image["id"] = image_id
        if entry and _str(entry.get("digest")):
            image.setdefault("digest", entry["digest"])
        return image


def _cgroup_matches(state: dict, cgroup_path: str) -> bool:
    paths = state.get("cgroup_paths")
    if not isinstance(paths, dict):
        return True  # nothing to check against
    wanted = "/" + cgroup_path.strip("/")
    return any(isinstance(p, str) and (p.rstrip("/").endswith(wanted) or p.rstrip("/").endswith(wanted + "/container"))
               for p in paths.values())


def _privileged(bounding) -> bool | None:
    """Whether a capability list grants CAP_SYS_ADMIN: what the escapes Falco's rules
    watch for need, and what Docker's --privileged gives (with everything else)."""
    return "CAP_SYS_ADMIN" in bounding if isinstance(bounding, list) else None


def _spec_privileged(spec) -> bool | None:
    """_privileged() of an OCI runtime spec (config.json)."""
    return _privileged(_dict(_dict(_dict(spec).get("process")).get("capabilities")).get("bounding"))


# Kubernetes metadata in annotations (CRI runtimes) or labels (dockershim, CRI-O).
_K8S_KEYS = {
    "pod_name": ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
    "pod_namespace": ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"),
    "pod_uid": ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"),
    "container": ("io.kubernetes.cri.container-name", "io.kubernetes.container.name"),
    "image": ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"),
    "name": ("io.kubernetes.cri-o.Name", "nerdctl/name"),
}


def _apply_annotations(identity: Identity, annotations: dict) -> None:
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

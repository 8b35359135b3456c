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

from sensor.identity.runtimes.paths import PathMatch, is_host_cgroup, parse_cgroup_path
from sensor.identity.runtimes.resolver import Resolver
from sensor.identity.runtimes.state import HOST, MAX_LABELS, MAX_VALUE_LEN, Identity, StateError, parse_image

__all__ = ["HOST", "MAX_LABELS", "MAX_VALUE_LEN", "Identity", "PathMatch", "Resolver", "StateError",
           "is_host_cgroup", "parse_cgroup_path", "parse_image"]

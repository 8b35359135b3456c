"""runc, standalone or under any other runtime: `<runc root>/<id>/state.json`, whose
`cgroup_paths` give the cgroup and whose `config.labels` hold the OCI bundle's
annotations as `key=value` (and `bundle=<path>`)."""

from __future__ import annotations

import os

from sensor.identity.runtimes.state import (Identity, StateError, StateReader, apply_annotations, apply_spec, as_dict,
                                            as_str, bounded, privileged, read_json)

RUNC_ROOTS = ("run/runc", "run/docker/runtime-runc/moby", "run/containerd/runc/k8s.io",
              "run/containerd/runc/default", "run/crun")


def identity(state: StateReader, container_id: str, cgroup_path: str | None) -> Identity | None:
    """`cgroup_path`: the cgroup it must be in (None: not checked)."""
    if not container_id or container_id in (".", "..") or "/" in container_id:
        return None
    for runc_root in RUNC_ROOTS:
        found = state.read(runc_root, container_id, "state.json")
        if not isinstance(found, dict):
            continue
        if cgroup_path is not None and not _cgroup_matches(found, cgroup_path):
            continue  # a runc container of that name, but in another cgroup
        # runc records the bundle's annotations as key=value labels, and the bundle itself
        config = as_dict(found.get("config"))
        pairs = [str(x).partition("=") for x in config.get("labels") or [] if isinstance(x, str)]
        annotations = bounded({k: v for k, sep, v in pairs if sep and k != "bundle"})
        result = Identity(id=container_id, runtime="runc", labels=annotations, created=as_str(found.get("created")),
                          privileged=privileged(as_dict(config.get("capabilities")).get("Bounding")))
        apply_annotations(result, annotations)
        bundle = next((v for k, sep, v in pairs if sep and k == "bundle"), None)
        if bundle and os.path.isabs(bundle):
            try:  # the bundle's spec: the container's user, capabilities and host mounts
                apply_spec(result, read_json(state.path(bundle.lstrip("/"), "config.json")))
            except StateError:
                pass  # what the state says stands
        return result
    return None


def _cgroup_matches(state: dict, cgroup_path: str) -> bool:
    paths = state.get("cgroup_paths")
    if not isinstance(paths, dict):
        return True  # nothing to check against
    wanted = "/" + cgroup_path.strip("/")
    return any(isinstance(p, str) and (p.rstrip("/").endswith(wanted) or p.rstrip("/").endswith(wanted + "/container"))
               for p in paths.values())

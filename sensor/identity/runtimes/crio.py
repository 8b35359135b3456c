"""CRI-O: cgroup `crio-<id>.scope` or `crio-<id>`; `userdata/config.json` under
`overlay-containers/<id>/` of containers/storage, annotations `io.kubernetes.*` and
`io.kubernetes.cri-o.*`."""

from __future__ import annotations

from sensor.identity.runtimes.state import Identity, StateReader, apply_annotations, apply_spec, bounded

# containers/storage, shared with Podman: the run-time copy first.
STORAGE = ("run/containers/storage", "var/lib/containers/storage")


def identity(state: StateReader, container_id: str) -> Identity | None:
    for storage in STORAGE:
        spec = state.read(storage, "overlay-containers", container_id, "userdata", "config.json")
        if isinstance(spec, dict):
            annotations = bounded(spec.get("annotations"))
            if annotations.get("io.container.manager") == "libpod":
                continue  # podman keeps its containers in the same storage (with some cri-o keys)
            result = Identity(id=container_id, runtime="cri-o", labels=annotations)
            apply_annotations(result, annotations)
            apply_spec(result, spec)
            return result
    return None

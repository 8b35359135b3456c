"""Podman (libpod): cgroup `libpod-<id>.scope` (possibly with a `container` child
cgroup) or `libpod_parent/libpod-<id>`; names and images in containers/storage's
`overlay-containers/containers.json` and `overlay-images/images.json`."""

from __future__ import annotations

from sensor.identity.runtimes.crio import STORAGE
from sensor.identity.runtimes.state import (Identity, StateReader, apply_spec, as_dict, as_str, bounded,
                                            parse_image)


def identity(state: StateReader, container_id: str) -> Identity | None:
    for storage in STORAGE[::-1]:
        containers = state.read(storage, "overlay-containers", "containers.json")
        if not isinstance(containers, list):
            continue
        entry = next((c for c in containers if isinstance(c, dict) and c.get("id") == container_id), None)
        if entry is None:
            continue
        names = [n for n in entry.get("names") or [] if isinstance(n, str)]
        result = Identity(id=container_id, runtime="podman", name=names[0] if names else None,
                          created=as_str(entry.get("created")))
        image_id = as_str(entry.get("image"))
        if image_id:
            result.image = _image(state, storage, image_id)
        spec = state.read(storage, "overlay-containers", container_id, "userdata", "config.json")
        result.labels = bounded(as_dict(spec).get("annotations"))
        apply_spec(result, spec)
        return result
    return None


def _image(state: StateReader, storage: str, image_id: str) -> dict:
    images = state.read(storage, "overlay-images", "images.json")
    entry = next((i for i in images if isinstance(i, dict) and i.get("id") == image_id), None) \
        if isinstance(images, list) else None
    names = [n for n in (entry or {}).get("names") or [] if isinstance(n, str)]
    image = parse_image(names[0]) if names else {}
    image["id"] = image_id
    if entry and as_str(entry.get("digest")):
        image.setdefault("digest", entry["digest"])
    return image

"""Docker: cgroup `/docker/<id>` (cgroupfs driver) or `docker-<id>.scope` (systemd);
state in `/var/lib/docker/containers/<id>/config.v2.json` and `hostconfig.json`."""

from __future__ import annotations

from sensor.identity.runtimes.state import (Identity, StateReader, apply_annotations, as_dict, as_str, bounded,
                                            parse_image)

CONTAINERS = "var/lib/docker/containers"


def identity(state: StateReader, container_id: str) -> Identity | None:
    config = state.read(CONTAINERS, container_id, "config.v2.json")
    if not isinstance(config, dict):
        return None
    inner = as_dict(config.get("Config"))
    result = Identity(id=container_id, runtime="docker", name=(as_str(config.get("Name")) or "").lstrip("/") or None,
                      image=parse_image(as_str(inner.get("Image"))), labels=bounded(inner.get("Labels")),
                      created=as_str(config.get("Created")))
    if as_str(config.get("Image")):
        result.image["id"] = config["Image"]
    host_config = state.read(CONTAINERS, container_id, "hostconfig.json")
    if isinstance(host_config, dict) and isinstance(host_config.get("Privileged"), bool):
        result.privileged = host_config["Privileged"]
    apply_annotations(result, result.labels)  # dockershim put k8s metadata in labels
    return result

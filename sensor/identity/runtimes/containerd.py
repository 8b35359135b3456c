"""containerd (CRI, namespace k8s.io): cgroup `cri-containerd-<id>.scope`, or `<id>` in a
kubepods pod cgroup; the task bundle's OCI `config.json` under
`/run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/`, whose annotations
`io.kubernetes.cri.*` name the pod and the image."""

from __future__ import annotations

import os

from sensor.identity.runtimes.state import Identity, StateReader, apply_annotations, apply_spec, bounded

TASKS = "run/containerd/io.containerd.runtime.v2.task"


def identity(state: StateReader, container_id: str) -> Identity | None:
    try:
        namespaces = sorted(os.listdir(state.path(TASKS)))
    except OSError:
        return None
    for namespace in namespaces:
        spec = state.read(TASKS, namespace, container_id, "config.json")
        if isinstance(spec, dict):
            annotations = bounded(spec.get("annotations"))
            result = Identity(id=container_id, runtime="containerd", labels=annotations)
            apply_annotations(result, annotations)
            apply_spec(result, spec)
            result.labels = {**annotations, "io.containerd.namespace": namespace} if namespace != "k8s.io" \
                else annotations
            return result
    return None

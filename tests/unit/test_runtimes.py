"""Container identity from cgroup paths and runtime state, on fixtures laid out as each
runtime writes them (the real runc case runs in tests/e2e)."""

import json
import logging
import os

import pytest

from sensor.identity import runtimes
from sensor.identity.runtimes import state
from sensor.identity.runtimes import PathMatch, Resolver, parse_cgroup_path, parse_image

ID = "4f9a" * 16
UID = "0b4c2b1e-6a3d-4d1e-9f3a-2c5e8d7f6a10"
ESCAPED_UID = UID.replace("-", "_")


@pytest.mark.parametrize("path, expected", [
    # Docker: cgroupfs driver (v1 and v2 look alike) and systemd driver
    (f"/docker/{ID}", PathMatch("docker", ID, None)),
    (f"/system.slice/docker-{ID}.scope", PathMatch("docker", ID, None)),
    # containerd under Kubernetes: systemd driver, every QoS class, uid escaped by systemd
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ESCAPED_UID}.slice/cri-containerd-{ID}.scope",
     PathMatch("containerd", ID, UID)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{ESCAPED_UID}.slice/cri-containerd-{ID}.scope",
     PathMatch("containerd", ID, UID)),
    (f"/kubepods.slice/kubepods-pod{ESCAPED_UID}.slice/cri-containerd-{ID}.scope", PathMatch("containerd", ID, UID)),
    # cgroupfs driver: a bare id under the pod's cgroup names no runtime
    (f"/kubepods/burstable/pod{UID}/{ID}", PathMatch(None, ID, UID)),
    (f"/kubepods/pod{UID}/{ID}", PathMatch(None, ID, UID)),
    # CRI-O, and its conmon (the runtime's own process, not the container)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ESCAPED_UID}.slice/crio-{ID}.scope",
     PathMatch("cri-o", ID, UID)),
    (f"/kubepods/burstable/pod{UID}/crio-{ID}", PathMatch("cri-o", ID, UID)),
    (f"/kubepods.slice/kubepods-pod{ESCAPED_UID}.slice/crio-conmon-{ID}.scope", None),
    # Podman: systemd scope with its `container` child, cgroupfs parent, conmon
    (f"/machine.slice/libpod-{ID}.scope/container", PathMatch("podman", ID, None)),
    (f"/machine.slice/libpod-{ID}.scope", PathMatch("podman", ID, None)),
    (f"/libpod_parent/libpod-{ID}", PathMatch("podman", ID, None)),
    (f"/machine.slice/libpod-conmon-{ID}.scope", None),
    # runc with --systemd-cgroup
    ("/system.slice/runc-web-1.scope", PathMatch("runc", "web-1", None)),
    # host cgroups
    ("/", None), ("/system.slice/sshd.service", None), ("/user.slice/user-1000.slice/session-3.scope", None),
    (f"/docker/{ID[:12]}", None),  # not a full id
])
def test_cgroup_paths_name_runtime_id_and_pod(path, expected):
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize("reference, expected", [
    ("busybox", {"name": "busybox", "repository": "busybox"}),
    ("nginx:1.25", {"name": "nginx:1.25", "repository": "nginx", "tag": "1.25"}),
    ("registry.local:5000/team/app", {"name": "registry.local:5000/team/app",
                                      "repository": "registry.local:5000/team/app"}),
    ("registry.local:5000/team/app:v1@sha256:ab12", {
        "name": "registry.local:5000/team/app:v1@sha256:ab12", "repository": "registry.local:5000/team/app",
        "tag": "v1", "digest": "sha256:ab12"}),
    ("", {}), (None, {}),
])
def test_image_references_split_into_repository_tag_digest(reference, expected):
    assert parse_image(reference) == expected


def write(root, relative: str, content) -> str:
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    return path


def test_standalone_runc_from_state_json(tmp_path):
    write(tmp_path, "run/runc/web-1/state.json", {
        "id": "web-1", "created": "2026-11-24T05:25:42Z",
        "cgroup_paths": {"": "/sys/fs/cgroup/unified/web-1", "memory": "/sys/fs/cgroup/memory/web-1"},
        "config": {"labels": ["org.example/team=red", "tier=a=b", "bundle=/srv/web-1"]}})
    identity = Resolver(str(tmp_path)).resolve("/web-1")
    assert identity.as_record() == {"id": "web-1", "runtime": "runc", "created": "2026-11-24T05:25:42Z",
                                    "labels": {"org.example/team": "red", "tier": "a=b"}}
    # a runc container of that name whose cgroup is elsewhere is not this cgroup's
    assert Resolver(str(tmp_path)).resolve("/other/web-1").as_record() == {"id": "web-1", "resolved": False}
    # its bundle's spec gives its rights: capabilities, the host paths mounted into it, its user
    write(tmp_path, "srv/web-1/config.json", {
        "process": {"user": {"uid": 1000, "gid": 1000}, "capabilities": {"bounding": ["CAP_CHOWN", "CAP_NET_RAW"]}},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]},
                   {"destination": "/sock", "source": "/run/docker.sock", "options": ["bind", "ro"]}]})
    record = Resolver(str(tmp_path)).resolve("/web-1").as_record()
    assert (record["capabilities"], record["host_mounts"], record["user"], record["privileged"]) == \
        (["CAP_CHOWN", "CAP_NET_RAW"], ["/srv/data", "/run/docker.sock"], 1000, False)


def test_docker_from_config_v2(tmp_path):
    write(tmp_path, f"var/lib/docker/containers/{ID}/config.v2.json", {
        "ID": ID, "Name": "/web", "Created": "2026-11-20T10:00:00Z", "Image": "sha256:" + "1" * 64,
        "Config": {"Image": "nginx:1.25", "Labels": {"com.example.app": "shop"}}})
    for path in (f"/docker/{ID}", f"/system.slice/docker-{ID}.scope"):
        record = Resolver(str(tmp_path)).resolve(path).as_record()
        assert record == {"id": ID, "runtime": "docker", "name": "web", "created": "2026-11-20T10:00:00Z",
                          "image": {"name": "nginx:1.25", "repository": "nginx", "tag": "1.25",
                                    "id": "sha256:" + "1" * 64},
                          "labels": {"com.example.app": "shop"}}


CRI_ANNOTATIONS = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "app",
                   "io.kubernetes.cri.sandbox-name": "shop-7d9f", "io.kubernetes.cri.sandbox-namespace": "prod",
                   "io.kubernetes.cri.sandbox-uid": UID, "io.kubernetes.cri.image-name": "ghcr.io/acme/shop:2.1"}


def test_containerd_cri_from_task_bundle(tmp_path):
    write(tmp_path, f"run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json",
          {"ociVersion": "1.1.0", "annotations": CRI_ANNOTATIONS})
    expected = {"pod": {"name": "shop-7d9f", "namespace": "prod", "uid": UID}, "container": "app"}
    for path in (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ESCAPED_UID}.slice/"
                 f"cri-containerd-{ID}.scope", f"/kubepods/burstable/pod{UID}/{ID}"):
        identity = Resolver(str(tmp_path)).resolve(path)
        assert (identity.runtime, identity.name, identity.k8s) == ("containerd", "app", expected)
        assert identity.image == {"name": "ghcr.io/acme/shop:2.1", "repository": "ghcr.io/acme/shop", "tag": "2.1"}
        assert identity.labels == CRI_ANNOTATIONS


def test_crio_from_userdata(tmp_path):
    write(tmp_path, f"run/containers/storage/overlay-containers/{ID}/userdata/config.json", {"annotations": {
        "io.kubernetes.cri-o.Name": "k8s_app_shop-7d9f_prod_" + UID + "_0", "io.kubernetes.container.name": "app",
        "io.kubernetes.pod.name": "shop-7d9f", "io.kubernetes.pod.namespace": "prod", "io.kubernetes.pod.uid": UID,
        "io.kubernetes.cri-o.ImageName": "quay.io/acme/shop@sha256:ffee"}})
    identity = Resolver(str(tmp_path)).resolve(f"/kubepods/burstable/pod{UID}/crio-{ID}")
    assert identity.runtime == "cri-o" and identity.name.startswith("k8s_app_shop-7d9f")
    assert identity.k8s == {"pod": {"name": "shop-7d9f", "namespace": "prod", "uid": UID}, "container": "app"}
    assert identity.image == {"name": "quay.io/acme/shop@sha256:ffee", "repository": "quay.io/acme/shop",
                              "digest": "sha256:ffee"}


def test_podman_from_containers_storage(tmp_path):
    image_id = "9" * 64
    write(tmp_path, "var/lib/containers/storage/overlay-containers/containers.json", [
        {"id": "0" * 64, "names": ["other"]},
        {"id": ID, "names": ["db"], "image": image_id, "created": "2026-11-23T08:00:00Z"}])
    write(tmp_path, "var/lib/containers/storage/overlay-images/images.json", [
        {"id": image_id, "names": ["docker.io/library/postgres:16"], "digest": "sha256:beef"}])
    write(tmp_path, f"var/lib/containers/storage/overlay-containers/{ID}/userdata/config.json",
          {"annotations": {"io.container.manager": "libpod", "io.kubernetes.cri-o.TTY": "false"}})
    assert Resolver(str(tmp_path)).resolve(f"/kubepods/pod{UID}/crio-{ID}").resolved is False  # not CRI-O's
    record = Resolver(str(tmp_path)).resolve(f"/machine.slice/libpod-{ID}.scope/container").as_record()
    assert record == {"id": ID, "runtime": "podman", "name": "db", "created": "2026-11-23T08:00:00Z",
                      "image": {"name": "docker.io/library/postgres:16", "repository": "docker.io/library/postgres",
                                "tag": "16", "id": image_id, "digest": "sha256:beef"},
                      "labels": {"io.container.manager": "libpod", "io.kubernetes.cri-o.TTY": "false"}}


def test_a_container_path_without_state_yet_is_unresolved_and_host_paths_are_host(tmp_path):
    identity = Resolver(str(tmp_path)).resolve(f"/kubepods/burstable/pod{UID}/crio-{ID}")
    assert identity.as_record() == {"id": ID, "runtime": "cri-o", "k8s": {"pod": {"uid": UID}}, "resolved": False}
    # a plain cgroup may be a runc container whose state is not written yet
    assert Resolver(str(tmp_path)).resolve("/web-2").as_record() == {"id": "web-2", "resolved": False}
    for host in ("/", "/system.slice/cron.service", "/user.slice/user-1000.slice/session-2.scope", "/init.scope",
                 "/libpod_parent", "/docker", "/kubepods", "/kubepods/burstable", f"/kubepods/burstable/pod{UID}",
                 f"/kubepods.slice/kubepods-pod{ESCAPED_UID}.slice"):
        assert Resolver(str(tmp_path)).resolve(host).as_record() == {"id": "host"}


# ---- hostile or broken state: a clear log line, no crash, nothing made up ----

def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_invalid_json_is_logged_with_its_path(tmp_path, caplog):
    path = write(tmp_path, f"var/lib/docker/containers/{ID}/config.v2.json", "{not json")
    identity = Resolver(str(tmp_path)).resolve(f"/docker/{ID}")
    assert identity.as_record() == {"id": ID, "runtime": "docker", "resolved": False}
    assert any(path in w and "invalid JSON" in w for w in warnings(caplog))


def test_wrong_shapes_are_ignored(tmp_path):
    write(tmp_path, f"var/lib/docker/containers/{ID}/config.v2.json",
          {"Name": ["x"], "Config": "nope", "Image": 7, "Created": {"a": 1}})
    assert Resolver(str(tmp_path)).resolve(f"/docker/{ID}").as_record() == {"id": ID, "runtime": "docker"}
    write(tmp_path, "run/runc/web-1/state.json", ["a", "list"])
    assert Resolver(str(tmp_path)).resolve("/web-1").resolved is False


def test_huge_labels_are_bounded(tmp_path):
    labels = {f"k{i}": "v" * (runtimes.MAX_VALUE_LEN + 10 if i == 0 else 1) for i in range(runtimes.MAX_LABELS + 50)}
    write(tmp_path, f"var/lib/docker/containers/{ID}/config.v2.json", {"Config": {"Labels": labels}})
    identity = Resolver(str(tmp_path)).resolve(f"/docker/{ID}")
    assert len(identity.labels) == runtimes.MAX_LABELS
    assert identity.labels["k0"].endswith("...[cut]") and len(identity.labels["k0"]) < runtimes.MAX_VALUE_LEN + 10


def test_oversized_state_files_are_not_read(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(state, "MAX_STATE_BYTES", 100)
    write(tmp_path, f"var/lib/docker/containers/{ID}/config.v2.json", {"Name": "/x" + "y" * 200})
    assert Resolver(str(tmp_path)).resolve(f"/docker/{ID}").resolved is False
    assert any("more than the 100 read" in w for w in warnings(caplog))


def test_symlinks_out_of_a_state_directory_are_refused(tmp_path, caplog):
    secret = write(tmp_path, "etc/secret.json", {"Name": "/stolen"})
    os.makedirs(tmp_path / "var/lib/docker/containers", exist_ok=True)
    os.symlink(os.path.dirname(secret), tmp_path / f"var/lib/docker/containers/{ID}")  # a directory link
    os.rename(secret, os.path.join(os.path.dirname(secret), "config.v2.json"))
    assert Resolver(str(tmp_path)).resolve(f"/docker/{ID}").name is None
    assert any("resolves outside" in w for w in warnings(caplog))
    # a final-component link, even inside the directory, is not followed either
    os.makedirs(tmp_path / "run/runc/web-1")
    write(tmp_path, "run/runc/real.json", {"config": {"labels": ["a=b"]}})
    os.symlink(tmp_path / "run/runc/real.json", tmp_path / "run/runc/web-1/state.json")
    assert Resolver(str(tmp_path)).resolve("/web-1").resolved is False
    assert any("cannot open" in w for w in warnings(caplog))


def test_non_regular_state_files_are_refused(tmp_path, caplog):
    os.makedirs(tmp_path / "run/runc/web-1")
    os.mkfifo(tmp_path / "run/runc/web-1/state.json")  # would block a plain open
    assert Resolver(str(tmp_path)).resolve("/web-1").resolved is False
    assert any("not a regular file" in w for w in warnings(caplog))


@pytest.mark.parametrize("name", ["..", ".", ""])
def test_dot_names_are_not_looked_up(tmp_path, name):
    write(tmp_path, "run/state.json", {"config": {}})
    assert not Resolver(str(tmp_path)).resolve("/" + name).is_container

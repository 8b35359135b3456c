"""A real-container rig for tests and benchmarks: runc, overlayfs, a busybox image.

The image is Debian's dynamically linked busybox with the host's libc and loader
copied in (Alpine-like: processes have their own names, unlike busybox-static's,
which all run as /proc/self/exe). Each container gets an overlayfs root over that
shared image with its own upper dir, as Docker and containerd do, and an OCI
config written by `runc spec`. Containers are created and started separately
(`runc create` + `runc start`, like containerd) so that their cgroup is known
before their first instruction runs; the rig is the child subreaper that reaps
them, as a containerd shim is, and so gets their exit status.

Needs root, runc, dpkg-deb and apt-get (Debian/Ubuntu); gcc with a static libc
for `compile_static`.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

from sensor.system import host

DEFAULT_WORKDIR = "/var/tmp/mayfly-rig"
ID_PREFIX = "mayfly-"
_PR_SET_CHILD_SUBREAPER = 36


class RigError(RuntimeError):
    pass


def _run(*cmd: str, cwd: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and result.returncode:
        raise RigError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def build_busybox_image(cache_dir: str) -> str:
    """The shared read-only image (built once per busybox version); returns its path."""
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        download = ("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", "busybox")
        if _run(*download, cwd=tmp, check=False).returncode:
            _run("apt-get", "update", "-q")  # a fresh host has no package lists yet
            _run(*download, cwd=tmp)
        deb = os.path.join(tmp, next(f for f in os.listdir(tmp) if f.endswith(".deb")))
        version = _run("dpkg-deb", "-f", deb, "Version").stdout.strip().replace(":", "_")
        image = os.path.join(cache_dir, f"busybox-{version}")
        if os.path.isdir(image):
            return image
        _run("dpkg-deb", "-x", deb, os.path.join(tmp, "deb"))
        rootfs = os.path.join(tmp, "rootfs")
        _assemble_rootfs(os.path.join(tmp, "deb", "bin", "busybox"), rootfs)
        os.rename(rootfs, image)  # atomic: a half-built image is never used
        return image


def _assemble_rootfs(busybox: str, rootfs: str) -> None:
    for d in ("bin", "dev", "etc", "mnt", "proc", "root", "sys", "tmp", "usr/local/bin", "var/tmp"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy2(busybox, os.path.join(rootfs, "bin", "busybox"))
    for applet in _run(busybox, "--list-full").stdout.split():
        link = os.path.join(rootfs, applet)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)
    # The host's libc and loader, at the paths the binary asks for.
    for line in _run("ldd", busybox).stdout.splitlines():
        parts = line.split()
        lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if lib.startswith("/"):
            dest = os.path.join(rootfs, lib.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)
    with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(os.path.join(rootfs, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")


@dataclass(frozen=True)
class Result:
    id: str
    exit_code: int  # negative: killed by that signal
    stdout: str
    stderr: str
    cgroup_id: int


class Container:
    """One runc container: created by `ContainerRig.create`, then `start`, `wait`, `delete`."""

    def __init__(self, rig: ContainerRig, container_id: str, directory: str):
        self.rig = rig
        self.id = container_id
        self.dir = directory
        self.bundle = os.path.join(directory, "bundle")
        self.rootfs = os.path.join(directory, "merged")
        self.upper = os.path.join(directory, "upper")
        self.pid: int | None = None
        self.cgroup_dir: str | None = None
        self.exit_code: int | None = None

    @property
    def cgroup_id(self) -> int:
        return host.cgroup_id(self.cgroup_dir)

    def start(self) -> Container:
        _run("runc", "start", self.id)
        return self

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code (negative for a signal); raises RigError on timeout."""
        if self.exit_code is None:
            pidfd = os.pidfd_open(self.pid)
            try:
                if not select.select([pidfd], [], [], timeout)[0]:
                    raise RigError(f"container {self.id} still running after {timeout}s")
            finally:
                os.close(pidfd)
            status = os.waitpid(self.pid, 0)[1]
            self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        _run("runc", "kill", self.id, str(int(sig)), check=False)

    def output(self) -> tuple[str, str]:
        def read(name: str) -> str:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                return f.read()
        return read("stdout"), read("stderr")

    def delete(self) -> None:
        """Remove the container, its mount and files; safe to call more than once."""
        if self.exit_code is None and self.pid is not None:
            self.kill()
            self.wait()
        _run("runc", "delete", "--force", self.id, check=False)
        if os.path.ismount(self.rootfs):
            host.umount(self.rootfs)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.rig.containers.pop(self.id, None)


class ContainerRig:
    """Makes and cleans up real containers. Use as a context manager, or call cleanup()."""

    def __init__(self, workdir: str = DEFAULT_WORKDIR):
        if os.geteuid() != 0:
            raise RigError("the container rig needs root")
        if shutil.which("runc") is None:
            raise RigError("runc is not installed (Debian/Ubuntu/Fedora package: runc)")
        self.workdir = workdir
        self.containers: dict[str, Container] = {}
        self._image: str | None = None
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise RigError("cannot become a child subreaper")
        self._sweep_stale()

    def __enter__(self) -> ContainerRig:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    @property
    def image(self) -> str:
        if self._image is None:
            self._image = build_busybox_image(os.path.join(self.workdir, "images"))
        return self._image

    def create(self, args: list[str], *, host_network: bool = False, files: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None, env: dict[str, str] | None = None,
               capabilities: list[str] = (), uid: int = 0, netns: str | None = None,
               started: bool = False) -> Container:
        """A created (not yet started) container. `files` maps paths in the container to host
        files copied into its upper dir. `capabilities` are granted beyond runc's default
        ones; `uid` is the user its process runs as; `netns`, a named network namespace
        (pyroute2.netns, under /var/run/netns) it joins instead of a new one. `started`:
        created and started in one step (`runc run -d`, as `docker run`), not created only."""
        container_id = f"{ID_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        container = Container(self, container_id, os.path.join(self.workdir, "containers", container_id))
        self.containers[container_id] = container
        try:
            self._prepare_rootfs(container, files or {})
            self._write_config(container, args, host_network, annotations or {}, env or {}, list(capabilities), uid,
                               netns)
            pid_file = os.path.join(container.dir, "pid")
            with open(os.path.join(container.dir, "stdout"), "w") as out, \
                    open(os.path.join(container.dir, "stderr"), "w") as err:
                command = ["runc", "run", "-d"] if started else ["runc", "create"]
                result = subprocess.run([*command, "--bundle", container.bundle, "--pid-file", pid_file,
                                         container_id], stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            if result.returncode:
                raise RigError(f"{' '.join(command)} {container_id} failed: {container.output()[1].strip()[-2000:]}")
            with open(pid_file) as f:
                container.pid = int(f.read())
            container.cgroup_dir = host.cgroup2_dir_of(container.pid)
        except BaseException:
            container.delete()
            raise
        return container

    def run(self, args: list[str], timeout: float = 30.0, **options) -> Result:
        """Create, start, wait for and delete a container; its output and cgroup id."""
        container = self.create(args, **options)
        try:
            cgroup_id = container.cgroup_id
            container.start()
            exit_code = container.wait(timeout)
            stdout, stderr = container.output()
            return Result(container.id, exit_code, stdout, stderr, cgroup_id)
        finally:
            container.delete()

    def compile_static(self, name: str, c_source: str, flags: tuple[str, ...] = ()) -> str:
        """A static binary from C source (cached by content and flags, such as "-m32"),
        to put in a container with `files`."""
        digest = hashlib.sha256(" ".join((c_source, *flags)).encode()).hexdigest()[:16]
        out_dir = os.path.join(self.workdir, "helpers", digest)
        binary = os.path.join(out_dir, name)
        if not os.path.exists(binary):
            os.makedirs(out_dir, exist_ok=True)
            source = os.path.join(out_dir, f"{name}.c")
            with open(source, "w") as f:
                f.write(c_source)
            _run("gcc", "-static", "-O2", *flags, "-o", f"{binary}.tmp", source)
            os.rename(f"{binary}.tmp", binary)
        return binary

    def cleanup(self) -> None:
        for container in list(self.containers.values()):
            container.delete()

    def _prepare_rootfs(self, container: Container, files: dict[str, str]) -> None:
        work = os.path.join(container.dir, "work")
        for d in (container.upper, work, container.rootfs, container.bundle):
            os.makedirs(d)
        for path, source in files.items():
            dest = os.path.join(container.upper, path.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(source, dest)
        host.mount("overlay", container.rootfs, source="overlay",
                   options=f"lowerdir={self.image},upperdir={container.upper},workdir={work}")

    @staticmethod
    def _write_config(container: Container, args: list[str], host_network: bool,
                      annotations: dict[str, str], env: dict[str, str], capabilities: list[str], uid: int,
                      netns: str | None) -> None:
        _run("runc", "spec", "--bundle", container.bundle)
        path = os.path.join(container.bundle, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["root"] = {"path": container.rootfs, "readonly": False}
        config["hostname"] = container.id[:63]
        process = config["process"]
        process.update(args=list(args), terminal=False, cwd="/")
        process["env"] += [f"{k}={v}" for k, v in env.items()]
        process["user"] = {"uid": uid, "gid": uid}
        for kind in ("bounding", "effective", "permitted"):
            process["capabilities"][kind] += [c for c in capabilities if c not in process["capabilities"][kind]]
        if host_network or netns:
            config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
        if netns:
            config["linux"]["namespaces"].append({"type": "network", "path": f"/var/run/netns/{netns}"})
        config["annotations"] = dict(annotations)
        with open(path, "w") as f:
            json.dump(config, f, indent=1)

    def _sweep_stale(self) -> None:
        """Delete containers left by rigs whose process died (a crashed test run)."""
        containers_dir = os.path.join(self.workdir, "containers")
        known = set(_run("runc", "list", "-q", check=False).stdout.split())
        if os.path.isdir(containers_dir):
            known.update(os.listdir(containers_dir))
        for container_id in known:
            if not container_id.startswith(ID_PREFIX):
                continue
            owner = container_id[len(ID_PREFIX):].split("-", 1)[0]
            if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                Container(self, container_id, os.path.join(containers_dir, container_id)).delete()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; that value, or RigError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RigError(f"condition not met within {timeout}s")

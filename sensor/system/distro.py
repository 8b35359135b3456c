"""Which system packages Mayfly needs, by distribution family.

Standard library only: the Makefile runs this file directly (`python3
sensor/system/distro.py packages`) before the venv exists, so the package names live in
one place for both `make setup` and the sensor's error messages.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass

_DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "ppc64le": "ppc64el", "s390x": "s390x"}


@dataclass(frozen=True)
class Distro:
    family: str  # "debian" (Debian, Ubuntu, ...), "fedora" (Fedora, RHEL, ...) or "unknown"
    name: str

    @property
    def bcc_package(self) -> str:
        return {"debian": "python3-bpfcc", "fedora": "python3-bcc"}.get(self.family, "the BCC Python bindings")

    def header_packages(self, release: str | None = None) -> list[str]:
        """Header packages, best first: the one for the running kernel, then the generic one."""
        release = release or platform.release()
        if self.family == "debian":
            arch = _DEBIAN_ARCH.get(platform.machine(), platform.machine())
            generic = "linux-headers-generic" if self.name == "ubuntu" else f"linux-headers-{arch}"
            return [f"linux-headers-{release}", generic]
        if self.family == "fedora":
            return [f"kernel-devel-{release}", "kernel-devel"]
        return ["your distribution's kernel headers package"]

    def runtime_packages(self) -> list[str]:
        """What `make setup` installs: BCC, the container runtime and the test tools."""
        if self.family == "debian":
            # gcc-multilib: the tests build an ia32 helper to check 32-bit processes are seen.
            # podman: the tests check that its containers are named from its state.
            # chromium: the tests render a case's HTML report in a headless browser.
            multilib = ["gcc-multilib"] if platform.machine() == "x86_64" else []
            return [self.bcc_package, "runc", "podman", "gcc", "libc6-dev", *multilib, "make", "python3-venv", "ruby",
                    "chromium"]
        if self.family == "fedora":
            return [self.bcc_package, "runc", "podman", "gcc", "glibc-static", "make", "ruby", "chromium"]
        return []

    def bench_packages(self) -> list[str]:
        """What the benchmarks add (`make bench`, and `make test`, which runs their quick
        mode): the bpftrace peer, and redis for an application workload. Debian starts
        redis-server's own service when it installs it; the benchmarks run their own
        instance on another port."""
        if self.family == "debian":
            return ["bpftrace", "redis-server", "redis-tools"]
        if self.family == "fedora":
            return ["bpftrace", "redis"]
        return []


def detect(os_release: str = "/etc/os-release") -> Distro:
    fields: dict[str, str] = {}
    try:
        with open(os_release) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep:
                    fields[key] = value.strip('"')
    except OSError:
        return Distro("unknown", "unknown")
    name = fields.get("ID", "unknown")
    family_words = {name, *fields.get("ID_LIKE", "").split()}
    for family, members in (("debian", {"debian", "ubuntu"}), ("fedora", {"fedora", "rhel", "centos"})):
        if family_words & members:
            return Distro(family, name)
    return Distro("unknown", name)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _dpkg_installed(package: str) -> bool:
    result = _run("dpkg-query", "-W", "-f=${Status}", package)
    return result.returncode == 0 and "install ok installed" in result.stdout


def install(distro: Distro, bench: bool = False) -> None:
    """Install what is missing (idempotent: nothing is fetched when all is there), with
    the benchmarks' tools if `bench`."""
    has_headers = os.path.isdir(f"/lib/modules/{platform.release()}/build")
    wanted = distro.runtime_packages() + (distro.bench_packages() if bench else [])
    if distro.family == "debian":
        missing = [p for p in wanted if not _dpkg_installed(p)]
        headers = distro.header_packages()
        need_headers = not has_headers and not any(_dpkg_installed(p) for p in headers)
        if not missing and not need_headers:
            return
        _check(_run("apt-get", "update", "-q"))
        if need_headers:  # the running kernel's own package, else the distro's generic one
            missing.append(next((p for p in headers if _run("apt-cache", "show", p).returncode == 0), headers[-1]))
        print(f"installing: {' '.join(missing)}", flush=True)
        _check(_run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing))
    elif distro.family == "fedora":
        packages = wanted + ([] if has_headers else distro.header_packages()[:1])
        _check(_run("dnf", "install", "-y", *packages))
    else:
        sys.exit(f"unsupported distribution {distro.name!r}: install BCC's Python bindings, runc, gcc "
                 "and your kernel's headers by hand, then run `make venv host`")


def _check(result: subprocess.CompletedProcess) -> None:
    if result.returncode:
        sys.exit(f"{' '.join(map(str, result.args))} failed ({result.returncode}):\n{result.stdout[-3000:]}")


if __name__ == "__main__":
    distro = detect()
    commands = {
        "install": lambda: install(distro),
        "install-bench": lambda: install(distro, bench=True),
        "bcc": lambda: print(distro.bcc_package),
        "packages": lambda: print(" ".join(distro.runtime_packages())),
    }
    if sys.argv[1:2] and sys.argv[1] in commands and len(sys.argv) == 2:
        commands[sys.argv[1]]()
    else:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} {'|'.join(commands)}")

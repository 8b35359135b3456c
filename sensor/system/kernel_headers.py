"""Find a kernel header tree for BCC, falling back to the newest distro tree installed.

Order: /lib/modules/$(uname -r)/build; then $BCC_KERNEL_SOURCE; then the newest
/lib/modules/*/build, linked in as the running kernel's build/source so that BCC
finds it. The fallback is sound only because ebpf/ uses stable interfaces alone
(ebpf/README.md): the tree supplies uapi types and helper declarations, never the
layout of kernel internals.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass

from sensor.system import distro
from sensor.log import get_logger

log = get_logger("kernel_headers")

MODULES = "/lib/modules"


class HeadersMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class HeaderTree:
    path: str
    version: str
    origin: str  # "running kernel", "BCC_KERNEL_SOURCE" or "fallback"


def tree_version(build_dir: str, default: str) -> str:
    """The release a header tree was built for, from its generated utsrelease.h."""
    try:
        with open(os.path.join(build_dir, "include", "generated", "utsrelease.h")) as f:
            match = re.search(r'UTS_RELEASE\s+"([^"]+)"', f.read())
            return match.group(1) if match else default
    except OSError:
        return default


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def resolve(release: str | None = None, modules: str = MODULES, environ=os.environ,
            link: bool = True) -> HeaderTree:
    """The header tree BCC will use. With `link`, a fallback tree is linked in place."""
    release = release or platform.release()
    own = os.path.join(modules, release)
    build = os.path.join(own, "build")
    if os.path.isdir(build):
        return HeaderTree(build, tree_version(build, release), "running kernel")

    env = environ.get("BCC_KERNEL_SOURCE")
    if env:
        if not os.path.isdir(env):
            raise HeadersMissing(f"BCC_KERNEL_SOURCE={env} is not a directory")
        return HeaderTree(env, tree_version(env, "unknown"), "BCC_KERNEL_SOURCE")

    candidates = []
    if os.path.isdir(modules):
        for name in os.listdir(modules):
            candidate = os.path.join(modules, name, "build")
            if name != release and os.path.isdir(candidate):
                candidates.append((_version_key(tree_version(candidate, name)), name))
    if not candidates:
        wanted = " or ".join(distro.detect().header_packages(release))
        raise HeadersMissing(f"no kernel header tree for {release} and none to fall back to: "
                             f"install {wanted} (or set BCC_KERNEL_SOURCE)")
    name = max(candidates)[1]
    source_tree = os.path.realpath(os.path.join(modules, name, "build"))
    tree = HeaderTree(source_tree, tree_version(source_tree, name), "fallback")
    log.warning("kernel headers fall back to another release", running=release, headers=tree.version,
                tree=source_tree, reason="no header tree for the running kernel; "
                "sound because ebpf/ uses stable interfaces only")
    if link:
        os.makedirs(own, exist_ok=True)
        for entry in ("build", "source"):
            target = os.path.realpath(os.path.join(modules, name, entry))
            if os.path.isdir(target):
                _replace_symlink(target, os.path.join(own, entry))
    return tree


def _replace_symlink(target: str, path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)  # a dangling link from an uninstalled tree
    os.symlink(target, path)

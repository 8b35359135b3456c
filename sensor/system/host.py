"""Facts about the host and the small changes Mayfly makes to it: mounts, privileges."""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass

from sensor.log import get_logger
from sensor.system import uapi

log = get_logger("host")

TRACEFS = "/sys/kernel/tracing"
SECURITYFS = "/sys/kernel/security"
BPFFS = "/sys/fs/bpf"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"


class HostError(RuntimeError):
    """The host lacks something Mayfly needs; the message says what and how to fix it."""


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: str


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts(proc_mounts: str = "/proc/mounts") -> list[Mount]:
    result = []
    with open(proc_mounts) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                result.append(Mount(*(_unescape(p) for p in parts[:4])))
    return result


def find_mount(fstype: str, proc_mounts: str = "/proc/mounts") -> Mount | None:
    """The first mount of that filesystem type, or None."""
    return next((m for m in mounts(proc_mounts) if m.fstype == fstype), None)


def cgroup2_root(proc_mounts: str = "/proc/mounts") -> str:
    """Where the cgroup2 hierarchy is mounted: /sys/fs/cgroup on modern hosts,
    /sys/fs/cgroup/unified on hybrid ones. Read from the mount table, never assumed."""
    mount = find_mount("cgroup2", proc_mounts)
    if mount is None:
        raise HostError("no cgroup2 filesystem is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) "
                        "or boot with systemd.unified_cgroup_hierarchy")
    return mount.target


def cgroup2_dir_of(pid: int | str = "self") -> str:
    """The cgroup2 directory a process is in."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return os.path.join(cgroup2_root(), line[3:].strip().lstrip("/"))
    raise HostError(f"process {pid} has no cgroup2 membership")


def cgroup_id(cgroup_dir: str) -> int:
    """A cgroup2 id as bpf_get_current_cgroup_id() reports it: its directory's inode."""
    return os.stat(cgroup_dir).st_ino


_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def mount(fstype: str, target: str, source: str = "none", options: str | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0,
                   options.encode() if options else None) != 0:
        raise HostError(f"cannot mount {fstype} at {target}: {os.strerror(ctypes.get_errno())}")


# The compilers' libraries (BCC's clang and LLVM, Numba's llvmlite): their code runs
# while the sensor starts and, once every program and function is compiled, not again.
COMPILER_LIBRARIES = ("libLLVM", "libclang", "libllvmlite")


def release_free_memory(compilers: bool = False) -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim): BCC's
    compiler and Numba's leave tens of MiB free but resident after they run, and
    batches and tables that grew and shrank leave more. A no-op on a libc without it.
    With `compilers`, also reclaim the compilers' read-only pages (MADV_PAGEOUT): about
    150 MiB of code, read back from the files should a compiler run again."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
    if compilers:
        page_out(COMPILER_LIBRARIES)


def page_out(libraries: tuple[str, ...]) -> int:
    """Ask the kernel to reclaim the read-only file pages this process maps from the
    files whose names contain one of `libraries`; the bytes asked for. A kernel without
    MADV_PAGEOUT (before 5.4) refuses, and nothing changes."""
    advice = dict(uapi.defines(("asm-generic/mman-common.h",), "MADV_")).get("MADV_PAGEOUT")
    if advice is None:
        return 0
    asked = 0
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 6 or "w" in fields[1] or not any(lib in fields[5] for lib in libraries):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), advice) == 0:
                asked += end - start
    return asked


def umount(target: str) -> None:
    """Lazy unmount (MNT_DETACH): a busy mount goes once its last user does."""
    if _libc.umount2(target.encode(), _MNT_DETACH) != 0:
        raise HostError(f"cannot unmount {target}: {os.strerror(ctypes.get_errno())}")


def ensure_mounted(fstype: str, target: str) -> bool:
    """Mount `fstype` at `target` unless it is mounted somewhere. True if this call mounted it."""
    if find_mount(fstype):
        return False
    mount(fstype, target)
    log.info("mounted", fstype=fstype, target=target)
    return True


def tracefs_root() -> str | None:
    mount = find_mount("tracefs")
    if mount:
        return mount.target
    debugfs = find_mount("debugfs")
    if debugfs and os.path.isdir(os.path.join(debugfs.target, "tracing", "events")):
        return os.path.join(debugfs.target, "tracing")
    return None


def bpffs_root() -> str:
    """Where bpffs is mounted (pinned maps live there)."""
    mount = find_mount("bpf")
    if mount is None:
        raise HostError(f"bpffs is not mounted: mount it at {BPFFS}")
    return mount.target


def prepare() -> None:
    """Mount tracefs (BCC reads tracepoint formats from it), securityfs and bpffs (for
    the spawn gate's pinned map) if missing."""
    if tracefs_root() is None:
        ensure_mounted("tracefs", TRACEFS)
    ensure_mounted("securityfs", SECURITYFS)
    ensure_mounted("bpf", BPFFS)


def effective_capabilities(status: str = "/proc/self/status") -> set[str]:
    with open(status) as f:
        for line in f:
            if line.startswith("CapEff:"):
                bits = int(line.split()[1], 16)
                return {name for bit, name in uapi.capabilities().items() if bits >> bit & 1}
    return set()


def can_load_bpf(caps: set[str] | None = None) -> bool:
    """CAP_BPF with CAP_PERFMON (kernel >= 5.8), or CAP_SYS_ADMIN. Being uid 0 is not
    enough on its own: a root process in a container may lack both."""
    caps = effective_capabilities() if caps is None else caps
    return {"CAP_BPF", "CAP_PERFMON"} <= caps or "CAP_SYS_ADMIN" in caps

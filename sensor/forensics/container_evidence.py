"""What a case keeps of a frozen container as a whole: the files it wrote (its overlay
upper dir), the socket table of its network namespace (sock_diag, through pyroute2),
and its process tree.

The upper dir's names and links are the container's, so hostile: no symlink is ever
followed (each file is opened relative to its directory's fd, O_NOFOLLOW), a name is
kept as the container wrote it (bytes when not UTF-8), and sizes are capped.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from dataclasses import dataclass

import msgpack
from pyroute2 import DiagSocket
from pyroute2.netns import setns

from sensor.forensics.store import Case
from sensor.records import untrusted_text

DEFAULT_FILE_BYTES = 16 << 20     # one written file
DEFAULT_FILES_BYTES = 64 << 20    # all of them
DEFAULT_FILES = 10_000
_SOCKET_KINDS = {"tcp": (socket.IPPROTO_TCP,), "udp": (socket.IPPROTO_UDP,)}


@dataclass(frozen=True)
class Limits:
    file_bytes: int = DEFAULT_FILE_BYTES
    files_bytes: int = DEFAULT_FILES_BYTES
    files: int = DEFAULT_FILES


def upper_dir(pid: int) -> str | None:
    """The overlay upper dir of the root `pid` sees (None: its root is not an overlay)."""
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            separator = fields.index(b"-")
            if fields[4] == b"/" and fields[separator + 1] == b"overlay":
                for option in fields[separator + 3].split(b","):
                    if option.startswith(b"upperdir="):
                        return os.fsdecode(option[len(b"upperdir="):]).replace("\\040", " ")
    return None


def written_files(case: Case, upper: str, limits: Limits) -> list[dict]:
    """Every entry of the upper dir: regular files' bytes as `file` artifacts named by
    their path in the container; links, deletions (overlay whiteouts) and others listed
    only. Their list is returned (and stored as `files/written.msgpack`)."""
    listed: list[dict] = []
    total = 0
    for directory, dirs, names, dir_fd in os.fwalk(upper, follow_symlinks=False):
        inside = "/" + os.path.relpath(directory, upper).lstrip(".").lstrip("/")
        for name in dirs + names:  # a symlink to a directory is among `dirs`, never walked into
            path = os.fsencode(os.path.join(inside, name))
            if len(listed) >= limits.files:
                case.missing("written files", f"more than {limits.files} entries: the rest not listed")
                return listed
            entry = _entry(case, dir_fd, name, path, limits, total)
            if entry is None:
                continue
            total += entry.get("size", 0) if entry.get("kept") else 0
            listed.append(entry)
    case.add("files", "written.msgpack", msgpack.packb(listed, use_bin_type=True))
    return listed


def _entry(case: Case, dir_fd: int, name: str, path: bytes, limits: Limits, total: int) -> dict | None:
    """One entry's listing, its bytes kept if a regular file (None: a directory, walked)."""
    shown = untrusted_text(path)
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None  # removed while walked (the container was thawed by someone)
    if stat.S_ISDIR(st.st_mode):
        return None
    entry = {"path": shown, "mode": st.st_mode, "uid": st.st_uid, "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        return {**entry, "type": "symlink", "target": untrusted_text(os.fsencode(os.readlink(name, dir_fd=dir_fd)))}
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return {**entry, "type": "deleted"}  # an overlay whiteout: the container removed it
    if not stat.S_ISREG(st.st_mode):
        return {**entry, "type": "other"}
    entry.update(type="file", size=st.st_size, kept=False)
    if st.st_size > limits.file_bytes or total + st.st_size > limits.files_bytes:
        case.missing(f"file {shown!r}", f"{st.st_size} bytes: over the cap of {limits.file_bytes} per file "
                                        f"or {limits.files_bytes} in all")
        return entry
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        case.missing(f"file {shown!r}", e.strerror or str(e))
        return entry
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the lstat
            return {**entry, "type": "other"}
        data = os.pread(fd, limits.file_bytes + 1, 0)
    finally:
        os.close(fd)
    entry["kept"] = case.add("file", path if isinstance(shown, bytes) else shown, data[:limits.file_bytes])
    return entry


def sockets(case: Case, pid: int) -> dict | None:
    """The socket table of the network namespace `pid` is in, by sock_diag: TCP and UDP
    over IPv4 and IPv6, and Unix sockets (stored as `sockets/table.msgpack`)."""
    found: dict = {}
    failure: list[str] = []

    def read() -> None:  # in a thread of its own: setns moves only the calling thread
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as e:
            failure.append(e.strerror or str(e))
            return
        try:
            setns(target)
            try:
                with DiagSocket() as diag:
                    diag.bind()
                    for kind, (protocol,) in _SOCKET_KINDS.items():
                        for family in (socket.AF_INET, socket.AF_INET6):
                            found[f"{kind}{'6' if family == socket.AF_INET6 else ''}"] = [
                                _inet(m) for m in diag.get_sock_stats(family=family, protocol=protocol)]
                    found["unix"] = [_unix(m) for m in diag.get_sock_stats(family=socket.AF_UNIX)]
            finally:
                setns(home)
        except Exception as e:  # pyroute2's netlink errors are its own
            failure.append(f"{type(e).__name__}: {e}")
        finally:
            os.close(home)
            os.close(target)

    worker = threading.Thread(target=read, name="mayfly-sock-diag", daemon=True)
    worker.start()
    worker.join()
    if failure:
        case.missing("socket table", failure[0])
        return None
    try:
        found["namespace"] = os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        pass
    case.add("sockets", "table.msgpack", msgpack.packb(found, use_bin_type=True))
    return found


def _inet(message) -> dict:
    return {"state": message["idiag_state"], "src": message["idiag_src"], "sport": message["idiag_sport"],
            "dst": message["idiag_dst"], "dport": message["idiag_dport"], "inode": message["idiag_inode"],
            "uid": message["idiag_uid"]}


def _unix(message) -> dict:
    name = message.get_attr("UNIX_DIAG_NAME")
    return {"state": message["udiag_state"], "type": message["udiag_type"], "inode": message["udiag_ino"],
            "name": name}


def process_tree(case: Case, described: list[dict]) -> list[dict]:
    """Who started whom, from the processes' status: pid, ppid, name, cmdline, exe
    (stored as `processes/tree.msgpack`)."""
    tree = [{"pid": d["pid"], "ppid": int(d.get("status", {}).get("PPid", 0) or 0),
             "name": d.get("status", {}).get("Name"), "cmdline": d.get("cmdline"), "exe": d.get("exe")}
            for d in described]
    case.add("processes", "tree.msgpack", msgpack.packb(tree, use_bin_type=True))
    return tree

"""Mayfly's built-in rules as a competent BCC user writes them: one plain Python
predicate per rule over the decoded event, with the little state the rules need kept
in dicts (inet sockets per process, files written and made executable per container,
connections per container), and container identity by cgroup id. No rule language,
no Mayfly engine: this is the peer's (bcc_peer.py) matching.

What a predicate sees (Event): the syscall's type and result, its arguments by name as
raw registers, its first path argument (read at entry) or, for connect, its sockaddr;
the caller's pid, uid, comm, parent's pid and comm (read from the task at exit), and
its cgroup id. What it reads from /proc at the time, as such tools do: an exec's tty
and executable, and a runtime process's command line.

Not covered, because the peer does not keep it (the differential test,
tests/e2e/test_peer_differential.py, leaves these cases out):
- openat2's flags (in struct open_how, behind a pointer): its opens are neither reads
  nor writes to the rules;
- sockets inherited across fork: socket fds are known per process from socket(),
  accept() and dup*() only.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import socket
from collections import defaultdict, deque
from dataclasses import dataclass, field

from sensor.system import uapi

SHELLS = {"ash", "bash", "csh", "dash", "ksh", "sh", "tcsh", "zsh"}
SENSITIVE = {"/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/security/opasswd"}
BINARY_DIRECTORIES = {"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/lib", "/usr/lib"}
MINING_PORTS = {3333, 3334, 3357, 4444, 5555, 5556, 5588, 5730, 6099, 6666, 7777, 7778, 8333, 8888, 8899, 9332, 9999,
                14433, 14444, 45560, 45700}
PACKAGE_MANAGERS = {"apk", "apt", "apt-get", "aptitude", "dpkg", "rpm", "yum", "dnf", "microdnf", "zypper", "pip",
                    "pip3", "npm", "gem"}
OPENS = ("open", "openat", "openat2")
EXECS = ("execve", "execveat")


@dataclass
class Event:
    type: str
    res: int
    args: dict[str, int]
    path: str | None
    addr: dict | None
    pid: int
    uid: int
    comm: str
    ppid: int
    pcomm: str
    cgroup_id: int
    ts: int
    container: str | None = None
    # read from /proc on demand, once
    _proc: dict = field(default_factory=dict)

    def proc(self, what: str) -> str | None:
        if what not in self._proc:
            try:
                if what == "exe":
                    self._proc[what] = os.readlink(f"/proc/{self.pid}/exe")
                elif what == "cmdline":
                    with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                        self._proc[what] = f.read().decode(errors="replace")
                else:  # tty_nr, after the command's parentheses
                    with open(f"/proc/{self.pid}/stat", "rb") as f:
                        self._proc[what] = f.read().rsplit(b")", 1)[1].split()[4].decode()
            except (OSError, IndexError):
                self._proc[what] = None
        return self._proc[what]


def _flags(e: Event) -> int:
    return os.O_WRONLY | os.O_CREAT | os.O_TRUNC if e.type == "creat" else e.args.get("flags", 0)


def _opened_file(e: Event, types=OPENS) -> bool:
    return e.type in types and e.type != "openat2" and e.res >= 0 and not _flags(e) & os.O_DIRECTORY


def open_read(e: Event) -> bool:
    return _opened_file(e) and _flags(e) & os.O_ACCMODE != os.O_WRONLY


def open_write(e: Event) -> bool:
    return _opened_file(e, OPENS + ("creat",)) and _flags(e) & os.O_ACCMODE != os.O_RDONLY


def spawned(e: Event) -> bool:
    return e.type in EXECS and e.res == 0


def below(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


def runtime_setup(e: Event) -> bool:
    """A container runtime's init at work in the container's cgroup (runc re-executes
    itself as "exe" with argv "runc init" first)."""
    if e.comm.startswith("runc:") or e.comm in ("runc", "crun", "runsc", "conmon"):
        return True
    cmdline = e.proc("cmdline")
    return e.pcomm in ("runc", "crun") and (cmdline is None or cmdline.split("\0")[:2] == ["runc", "init"])


class Rules:
    """The rules, evaluated per event by type; state per process and container."""

    def __init__(self):
        ptrace = {name: value for value, name in uapi.ptrace_requests().items()}
        self.attach_requests = {ptrace[n] for n in ("PTRACE_ATTACH", "PTRACE_SEIZE", "PTRACE_POKETEXT",
                                                    "PTRACE_POKEDATA", "PTRACE_SETREGS")}
        self.sockets: dict[int, set[int]] = defaultdict(set)            # pid -> its inet socket fds
        self.written: dict[str, dict[str, int]] = defaultdict(dict)       # container -> path -> when written
        self.made_executable: dict[str, dict[str, int]] = defaultdict(dict)
        self.connections: dict[str, deque] = defaultdict(deque)           # container -> (when, address)
        stateless = {
            "Shell Spawned in Container": (EXECS, lambda e: spawned(e) and e.comm in SHELLS),
            "Sensitive File Read in Container": (OPENS, lambda e: open_read(e) and (
                e.path in SENSITIVE or posixpath.dirname(e.path) == "/etc/sudoers.d")),
            "Private Key Read in Container": (OPENS, lambda e: open_read(e) and (
                posixpath.basename(e.path) in ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519")
                or e.path.endswith(".key") or "/private/" in e.path)),
            "Cloud Credentials Read in Container": (OPENS, lambda e: open_read(e) and (
                e.path.endswith("/.aws/credentials") or e.path.endswith("/.aws/config")
                or "/.config/gcloud/" in e.path or "/.azure/" in e.path)),
            "Service Account Token Read in Container": (OPENS, lambda e: open_read(e) and any(
                below(e.path, d) for d in ("/var/run/secrets/kubernetes.io/serviceaccount",
                                           "/run/secrets/kubernetes.io/serviceaccount"))
                and e.comm in SHELLS | {"cat", "head", "tail", "more", "less"}),
            "Write Below Binary Directory in Container": (OPENS + ("creat",), lambda e: open_write(e) and
                                                          posixpath.dirname(e.path) in BINARY_DIRECTORIES),
            "Write Below Etc in Container": (OPENS + ("creat",), lambda e: open_write(e) and e.path.startswith("/etc/")),
            "Persistence Through Cron or SSH Keys in Container": (OPENS + ("creat",), lambda e: open_write(e) and (
                e.path.startswith("/etc/cron") or e.path.startswith("/var/spool/cron")
                or e.path.endswith("/.ssh/authorized_keys"))),
            "Log Files Cleared in Container": (OPENS, lambda e: e.type != "openat2" and e.res >= 0
                                               and _flags(e) & os.O_TRUNC and below(posixpath.dirname(e.path), "/var/log")),
            "Shell History Deleted in Container": (("unlink", "unlinkat"), lambda e: e.path.endswith("_history")),
            "Symlink Over Sensitive File in Container": (("symlink", "symlinkat"), lambda e: e.path in SENSITIVE),
            "Hardlink Over Sensitive File in Container": (("link", "linkat"), lambda e: e.path in SENSITIVE),
            "Setuid Bit Set in Container": (("chmod", "fchmodat"), lambda e: e.args["mode"] & 0xFFFFFFFF >= 0o4000),
            "Package Manager Run in Container": (EXECS, lambda e: spawned(e) and e.comm in PACKAGE_MANAGERS),
            "Terminal Shell in Container": (EXECS, lambda e: spawned(e) and e.comm in SHELLS
                                            and e.proc("tty") not in (None, "0")),
            "Download Tool Run in Container": (EXECS, lambda e: spawned(e) and e.comm in (
                "wget", "curl", "tftp", "ftpget", "aria2c")),
            "Netcat or Socat Run in Container": (EXECS, lambda e: spawned(e) and e.comm in (
                "nc", "ncat", "netcat", "socat")),
            "Execution From Memory or Shared Memory in Container": (EXECS, lambda e: spawned(e) and (
                (e.proc("exe") or "").startswith("/memfd:") or (e.path or "").startswith("/dev/shm/"))),
            "Ptrace Attach in Container": (("ptrace",), lambda e: e.args["request"] in self.attach_requests),
            "Setuid to Root by Non-Root in Container": (("setuid", "setresuid"), lambda e: e.uid != 0 and (
                e.args.get("uid", 1) & 0xFFFFFFFF == 0 or e.args.get("ruid", 1) & 0xFFFFFFFF == 0)),
            "Kernel Module Load from Container": (("init_module", "finit_module"), lambda e: True),
            "Mount in Container": (("mount",), lambda e: not runtime_setup(e)),
            "Namespace Change in Container": (("setns", "unshare"), lambda e: not runtime_setup(e)),
            "Release Agent or Core Pattern Written in Container": (OPENS + ("creat",), lambda e: open_write(e) and (
                e.path.endswith("/release_agent") or e.path == "/proc/sys/kernel/core_pattern")),
            "BPF Syscall in Container": (("bpf",), lambda e: True),
            "Packet Socket in Container": (("socket",), lambda e: e.args["domain"] & 0xFFFFFFFF == socket.AF_PACKET),
        }
        self.by_type: dict[str, list[tuple[str, object]]] = defaultdict(list)
        for name, (types, predicate) in stateless.items():
            for kind in types:
                self.by_type[kind].append((name, predicate))

    def types(self) -> set[str]:
        """The syscall types the rules need, their state's included."""
        return set(self.by_type) | {"socket", "accept", "accept4", "dup", "dup2", "dup3", "close", "connect",
                                    "chmod", "fchmodat"} | set(EXECS) | set(OPENS) | {"creat"}

    def match(self, e: Event) -> list[str]:
        """The rules the event matches; it updates the state whether in a container or not."""
        fired = self._stateful(e)
        if e.container is None:
            return []
        return fired + [name for name, predicate in self.by_type.get(e.type, ()) if predicate(e)]

    def _stateful(self, e: Event) -> list[str]:
        fired = []
        sockets = self.sockets[e.pid]
        if e.type == "socket" and e.res >= 0:
            if e.args["domain"] & 0xFFFFFFFF in (socket.AF_INET, socket.AF_INET6):
                sockets.add(e.res)
            else:
                sockets.discard(e.res)
        elif e.type in ("accept", "accept4") and e.res >= 0 and _int(e.args["fd"]) in sockets:
            sockets.add(e.res)
        elif e.type == "close" and e.res != -errno.EBADF:
            sockets.discard(_int(e.args["fd"]))
        elif e.type in ("dup", "dup2", "dup3") and e.res >= 0:
            if _int(e.args["oldfd"]) in sockets:
                sockets.add(e.res)
                if e.res in (0, 1, 2) and e.container is not None:
                    fired.append("Stdio Redirected to Network in Container")
            else:
                sockets.discard(e.res)
        if e.container is None:
            return fired
        if e.type == "connect" and _int(e.args["fd"]) in sockets and e.res in (0, -errno.EINPROGRESS) and e.addr:
            if e.addr.get("port") in MINING_PORTS:
                fired.append("Connection to Mining Pool Port from Container")
            window = self.connections[e.container]
            window.append((e.ts, e.addr.get("addr")))
            while window and window[0][0] < e.ts - 10_000_000_000:
                window.popleft()
            if len({address for _, address in window}) >= 20:
                fired.append("Network Scan from Container")
                window.clear()  # and counting starts again
        # A file written, made executable, then run, by path, within 30 s.
        if open_write(e):
            self.written[e.container][e.path] = e.ts
        elif e.type in ("chmod", "fchmodat") and e.path in self.written[e.container]:
            self.made_executable[e.container][e.path] = self.written[e.container][e.path]
        elif spawned(e):
            first = self.made_executable[e.container].pop(e.path, None)
            if first is not None and e.ts - first <= 30_000_000_000:
                fired.append("Drop, Make Executable and Run in Container")
        return fired


def _int(register: int) -> int:
    """An int argument from its register."""
    value = register & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


# cgroup path -> container id, as a user writes it: the runtimes' scope names, else the
# last component of a cgroup that is not the root or a systemd unit (runc, cgroupfs).
_RUNTIME_SCOPE = re.compile(r"(?:docker-|cri-containerd-|crio-|libpod-)([0-9a-f]{64})(?:\.scope)?")
_SYSTEMD_UNIT = re.compile(r".+\.(service|slice|scope|mount|socket)")


def container_of(path: str) -> str | None:
    last = path.rstrip("/").rsplit("/", 1)[-1]
    found = _RUNTIME_SCOPE.fullmatch(last)
    if found:
        return found[1]
    return None if not last or _SYSTEMD_UNIT.fullmatch(last) else last

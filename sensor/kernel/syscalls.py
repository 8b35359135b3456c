"""The syscalls Mayfly captures: how to read their arguments, and how to decode them.

Numbers come from the uapi header `asm/unistd_64.h` of the header tree BCC compiles
against, so C (`__NR_*`) and Python agree. The table below is the only description of
each syscall: it becomes the kernel's `syscall_specs` map (which arguments to copy
into which data slot) and the decoder of the `evt` fields of records.

Argument types:
  fd, int      signed 32-bit          uint   unsigned 32-bit      u64  unsigned 64-bit
  ptr          a user pointer: captured, but not put in records
  path, str    a user string (slot)   argv   an argument vector (slot 1, runs into 2)
  sockaddr     a socket address whose length is the next argument (slot)
  sockaddr_out the same, written by the kernel: read at exit, length behind a pointer
  open_how, capdata   fixed-size structs (slot)
  fdpair       two ints the kernel writes (pipe's and socketpair's new fds): read at exit
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from functools import cache

import numpy as np

from sensor.kernel import layout
from sensor.records import c_string, untrusted_text

_COMPAT = layout.events().constants["MAYFLY_SYSCALL_COMPAT"]
_NO_RESULT = layout.events().constants["MAYFLY_SYSCALL_NO_RESULT"]
_STOPPED = layout.events().constants["MAYFLY_SYSCALL_STOPPED"]
_GATED = layout.events().constants["MAYFLY_SYSCALL_GATED"]
_KILLED = layout.events().constants["MAYFLY_SYSCALL_KILLED"]
_SLOT_TYPES = {"path", "str", "argv", "sockaddr", "sockaddr_out", "open_how", "capdata", "fdpair"}
_NUMBER_TYPES = {"fd", "int", "uint", "u64"}  # decoded from the register (decode_args); other kinds are pointers
_FIXED_LEN = {"open_how": 24, "capdata": 24, "fdpair": 8}

# flags: track = the result is a new fd; track_pair = so are the two ints of an fdpair;
# tracked = only for tracked fds (args[0]);
# stdio = also when args[1] is 0-2; untrack = args[0] stops being an fd;
# dupfd = fcntl's F_DUPFD commands only; exit_code = keep args[0], emit nothing.
TABLE: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}


_RESERVED = {"type", "res", "truncated", "compat"}  # evt fields of their own


def _define(names: str, args: str, flags: str = "") -> None:
    clash = _RESERVED & {a.split(":")[0] for a in args.split()}
    if clash:
        raise ValueError(f"{names}: argument names {clash} are evt fields of their own")
    for name in names.split():
        TABLE[name] = (tuple(args.split()), frozenset(flags.split()))


# Process
_define("execve", "filename:path argv:argv envp:ptr")
_define("execveat", "dirfd:fd filename:path argv:argv envp:ptr flags:uint")
_define("exit exit_group", "code:int", "exit_code")
# Files: each *at syscall and its legacy x86_64 form, which busybox and static binaries use
_define("open", "name:path flags:uint mode:uint", "track")
_define("openat", "dirfd:fd name:path flags:uint mode:uint", "track")
_define("openat2", "dirfd:fd name:path how:open_how size:u64", "track")
_define("creat", "name:path mode:uint", "track")
_define("unlink", "name:path")
_define("unlinkat", "dirfd:fd name:path flags:uint")
_define("rename link", "oldpath:path newpath:path")
_define("renameat", "olddirfd:fd oldpath:path newdirfd:fd newpath:path")
_define("renameat2 linkat", "olddirfd:fd oldpath:path newdirfd:fd newpath:path flags:uint")
_define("symlink", "target:path linkpath:path")
_define("symlinkat", "target:path newdirfd:fd linkpath:path")
_define("chmod mkdir", "name:path mode:uint")
_define("fchmodat mkdirat", "dirfd:fd name:path mode:uint")
_define("mknod", "name:path mode:uint dev:uint")
_define("mknodat", "dirfd:fd name:path mode:uint dev:uint")
# Network
_define("socket", "domain:int socktype:int protocol:int", "track")
_define("connect bind", "fd:fd addr:sockaddr addrlen:uint")
_define("accept", "fd:fd addr:sockaddr_out addrlen:ptr", "track")
_define("accept4", "fd:fd addr:sockaddr_out addrlen:ptr flags:uint", "track")
_define("listen", "fd:fd backlog:int")
_define("socketpair", "domain:int socktype:int protocol:int fds:fdpair", "track_pair")
_define("pipe", "fds:fdpair", "track_pair")
_define("pipe2", "fds:fdpair flags:uint", "track_pair")
# Privileged and escape-relevant
_define("ptrace", "request:int pid:int addr:u64 data:u64")
_define("mount", "source:path target:path fstype:str flags:u64 data:u64")
_define("umount2", "target:path flags:uint")
_define("setns", "fd:fd nstype:int")
_define("unshare", "flags:uint")
_define("init_module", "image:ptr len:u64 params:str")
_define("finit_module", "fd:fd params:str flags:uint")
_define("bpf", "cmd:int attr:ptr size:uint")
_define("memfd_create", "name:str flags:uint", "track")
_define("setuid", "uid:uint")
_define("setgid", "gid:uint")
_define("setresuid", "ruid:uint euid:uint suid:uint")
_define("setresgid", "rgid:uint egid:uint sgid:uint")
_define("capset", "header:ptr data:capdata")
_define("prctl", "option:int arg2:u64 arg3:u64 arg4:u64 arg5:u64")
# fd bookkeeping (only for fds user space tracks), and dup onto stdio (reverse shells)
_define("close", "fd:fd", "tracked untrack")
_define("dup", "oldfd:fd", "tracked track")
_define("dup2", "oldfd:fd newfd:fd", "tracked stdio track")
_define("dup3", "oldfd:fd newfd:fd flags:uint", "tracked stdio track")
_define("fcntl", "fd:fd cmd:int arg:u64", "tracked dupfd track")

EXEC = ("execve", "execveat")
# Syscalls whose tracepoints the kernel names after another (SYSCALL_DEFINE) name.
_TRACEPOINT_NAMES = {"umount2": "umount"}


def exit_tracepoint(name: str) -> str:
    """The per-syscall exit tracepoint (category/name) that sees `name`'s result."""
    return f"syscalls/sys_exit_{_TRACEPOINT_NAMES.get(name, name)}"

OPENS = ("open", "openat", "openat2", "creat")  # make an fd for a path


def open_flags(evt: dict) -> int:
    """The open flags of an OPENS event's `evt` fields: creat's are implied, openat2's
    are in `how`."""
    if evt["type"] == "creat":
        return os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if evt["type"] == "openat2":
        return (evt.get("how") or {}).get("flags", 0)
    return evt.get("flags", 0)

_UAPI = ("arch/x86/include/generated/uapi/asm/unistd_64.h", "arch/x86/include/uapi/asm/unistd_64.h")
_SYSTEM = ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h")


def parse_unistd(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"#define\s+__NR_(\w+)\s+(\d+)", text)}


def unistd_path(header_tree: str | None) -> str:
    """The uapi syscall table: the header tree's own, else the system's copy."""
    candidates = [os.path.join(header_tree, p) for p in _UAPI] if header_tree else []
    candidates += list(_SYSTEM) + sorted(glob.glob("/usr/include/*/asm/unistd_64.h"))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("no asm/unistd_64.h: install the kernel headers or linux-libc-dev")


@dataclass(frozen=True)
class Syscall:
    name: str
    nr: int
    args: tuple[tuple[str, str], ...]  # (name, type) in register order
    flags: frozenset[str]

    def slots(self) -> list[tuple[int, int, str]]:
        """(slot, argument index, type) of the arguments that go into data slots."""
        result, slot = [], 0
        for index, (_, kind) in enumerate(self.args):
            if kind in _SLOT_TYPES:
                if kind == "argv":
                    slot = 1
                result.append((slot, index, kind))
                slot += 1
        return result

    def numbers(self) -> list[int]:
        """Indexes of the arguments decoded from their registers as numbers."""
        return [index for index, (_, kind) in enumerate(self.args) if kind in _NUMBER_TYPES]


class SyscallTable:
    def __init__(self, numbers: dict[str, int]):
        self.numbers = numbers
        self.names = {nr: name for name, nr in numbers.items()}
        self.syscalls = {name: Syscall(name, numbers[name], tuple(tuple(a.split(":")) for a in args), flags)
                         for name, (args, flags) in TABLE.items() if name in numbers}
        self.by_nr = {s.nr: s for s in self.syscalls.values()}
        self._plans: dict[int, list] = {}

    @classmethod
    def from_headers(cls, header_tree: str | None = None) -> SyscallTable:
        with open(unistd_path(header_tree)) as f:
            return cls(parse_unistd(f.read()))

    def name(self, nr: int) -> str:
        return self.names.get(nr) or f"syscall_{nr}"

    def specs(self, wanted: set[str], results: set[str], needles: set[str] = frozenset(),
              stopping: set[str] = frozenset()) -> np.ndarray:
        """The `syscall_specs` map's contents: capture what is in `wanted` (plus the
        exit codes, which lifecycle events need). `results`: those whose exit tracepoint
        is attached; the others are sent at enter, without a result, except an exec,
        which is sent from sched_process_exec when it succeeds (a failed one is only
        seen through its exit), and never asks the token bucket. `needles`: those the
        `needles` trie has entries for; `stopping`: those it has stopping ones for."""
        events = layout.events()
        c = events.constants
        specs = np.zeros(c["MAYFLY_MAX_SYSCALLS"], events.structs["mayfly_syscall_spec"])
        reads = {"path": c["MAYFLY_READ_STR"], "str": c["MAYFLY_READ_STR"], "argv": c["MAYFLY_READ_ARGV"],
                 "sockaddr": c["MAYFLY_READ_BYTES"], "sockaddr_out": c["MAYFLY_READ_BYTES_OUT"],
                 "open_how": c["MAYFLY_READ_FIXED"], "capdata": c["MAYFLY_READ_FIXED"],
                 "fdpair": c["MAYFLY_READ_FIXED_OUT"]}
        bits = {"track": "MAYFLY_SPEC_TRACK_RESULT", "tracked": "MAYFLY_SPEC_TRACKED_FD0",
                "stdio": "MAYFLY_SPEC_STDIO_FD1", "untrack": "MAYFLY_SPEC_UNTRACK_FD0",
                "dupfd": "MAYFLY_SPEC_DUPFD_CMD", "exit_code": "MAYFLY_SPEC_EXIT_CODE",
                "track_pair": "MAYFLY_SPEC_TRACK_PAIR"}
        for syscall in self.syscalls.values():
            flags = sum(c[bits[f]] for f in syscall.flags)
            if syscall.name in wanted and "exit_code" not in syscall.flags:
                flags |= c["MAYFLY_SPEC_EMIT"]
                if syscall.name not in results and syscall.name not in EXEC:
                    flags |= c["MAYFLY_SPEC_AT_ENTER"]
                if syscall.name in EXEC:
                    flags |= c["MAYFLY_SPEC_LIFECYCLE"]
                if syscall.name in needles:
                    flags |= c["MAYFLY_SPEC_NEEDLE"]
                if syscall.name in stopping:
                    flags |= c["MAYFLY_SPEC_STOP"]
                    if syscall.name == "creat":
                        flags |= c["MAYFLY_SPEC_OPEN_WRITES"]
            elif "exit_code" not in syscall.flags:
                continue
            spec = specs[syscall.nr]
            spec["flags"] = flags
            if syscall.name in OPENS and "flags" in (names := [arg for arg, _ in syscall.args]):
                spec["open_flags_arg"] = names.index("flags")  # what a stopping needle's access reads
            for slot, index, kind in syscall.slots():
                spec["slot"][slot]["read"] = reads[kind]
                spec["slot"][slot]["arg"] = index
                spec["slot"][slot]["len_arg"] = index + 1
                spec["slot"][slot]["len"] = _FIXED_LEN.get(kind, 0)
        return specs

    def decode_args(self, event: np.void) -> dict:
        """The `evt` fields of a syscall event: its type, result and named arguments."""
        return self.decode_many(np.asarray(event).reshape(1))[0]

    def decode_many(self, events: np.ndarray) -> list[dict]:
        """decode_args for each event of an array, with its columns read in bulk: a
        field of a numpy record read one at a time costs more than the decoding."""
        if not len(events):
            return []
        nrs, flags = events["nr"].tolist(), events["flags"].tolist()
        results, truncated = events["result"].tolist(), events["truncated"].tolist()
        args, lengths = events["args"].tolist(), events["slot_len"].tolist()
        # Records come without their unused tail: with no slot in use, there is no data.
        width = events.dtype["data"].itemsize if "data" in events.dtype.names else 0
        data = np.ascontiguousarray(events["data"]).tobytes() if width else b""
        slot_len = layout.events().constants["MAYFLY_STR_LEN"]
        result = []
        for i, nr in enumerate(nrs):
            fields = {"type": self.name(nr)}
            if not flags[i] & _NO_RESULT:
                fields["res"] = results[i]
            row = args[i]
            for name, kind, index, slot in self._plan(nr):
                if slot is not None:  # cut at the record's end, as sent
                    start = i * width + slot * slot_len
                    fields[name] = _decode_slot(kind, data[start:min(start + lengths[i][slot], (i + 1) * width)])
                elif kind == "uint":
                    fields[name] = row[index] & 0xFFFFFFFF
                elif kind == "u64":
                    fields[name] = row[index]
                else:  # fd, int: 32-bit signed
                    fields[name] = (row[index] & 0xFFFFFFFF) - ((row[index] & 0x80000000) << 1)
            if truncated[i]:
                fields["truncated"] = True
            if flags[i] & _COMPAT:
                fields["compat"] = True
            if flags[i] & _STOPPED:
                fields["stopped"] = True  # the kernel stopped the process here, for its capture or response
            if flags[i] & _GATED:
                fields["gated"] = True  # the spawn gate held it here, for its container's verdict
            if flags[i] & _KILLED:
                fields["killed"] = True  # the kernel killed the process here
            result.append(fields)
        return result

    def _plan(self, nr: int) -> list[tuple[str, str, int, int | None]]:
        """(name, kind, argument index, data slot or None) of the arguments a syscall's
        records carry: those in slots, and the numbers."""
        try:
            return self._plans[nr]
        except KeyError:
            syscall = self.by_nr.get(nr)
            slot_of = {index: slot for slot, index, _ in syscall.slots()} if syscall else {}
            plan = self._plans[nr] = [(name, kind, index, slot_of.get(index))
                                      for index, (name, kind) in enumerate(syscall.args if syscall else ())
                                      if index in slot_of or kind in _NUMBER_TYPES]
            return plan


def _decode_slot(kind: str, value: bytes):
    if kind in ("path", "str"):
        return c_string(value)
    if kind == "argv":  # NUL-terminated strings one after another; a cut last one has no NUL
        value = value[:-1] if value.endswith(b"\0") else value
        return [untrusted_text(a) for a in value.split(b"\0")] if value else []
    if kind in ("sockaddr", "sockaddr_out"):
        return sockaddr(value) if value else None
    if kind == "open_how":
        flags, mode, resolve = np.frombuffer(value.ljust(24, b"\0")[:24], "<u8")
        return {"flags": int(flags), "mode": int(mode), "resolve": int(resolve)}
    if kind == "fdpair":
        return np.frombuffer(value, "<i4").tolist() if len(value) == 8 else None
    if kind == "capdata":
        words = np.frombuffer(value.ljust(24, b"\0")[:24], "<u4").tolist()
        effective, permitted, inheritable = (words[i] | words[i + 3] << 32 for i in range(3))
        return {"effective": effective, "permitted": permitted, "inheritable": inheritable}
    raise ValueError(kind)


def sockaddr(raw: bytes) -> dict:
    """A struct sockaddr as the kernel saw it."""
    family = int.from_bytes(raw[:2], "little") if len(raw) >= 2 else 0
    if family == socket.AF_INET and len(raw) >= 8:
        return {"family": "inet", "addr": str(ipaddress.IPv4Address(raw[4:8])),
                "port": int.from_bytes(raw[2:4], "big")}
    if family == socket.AF_INET6 and len(raw) >= 24:
        return {"family": "inet6", "addr": str(ipaddress.IPv6Address(raw[8:24])),
                "port": int.from_bytes(raw[2:4], "big")}
    if family == socket.AF_UNIX:  # a path, or an abstract name after a NUL
        path = raw[2:]
        name = "@" + path[1:].split(b"\0", 1)[0].decode(errors="replace") if path[:1] == b"\0" else None
        return {"family": "unix", "path": name if name is not None else c_string(path)}
    return {"family": family}


@cache
def table() -> SyscallTable:
    """The table for the header tree BCC uses (resolved without changing the host)."""
    from sensor.system import kernel_headers
    try:
        tree = kernel_headers.resolve(link=False).path
    except kernel_headers.HeadersMissing:
        tree = None
    return SyscallTable.from_headers(tree)

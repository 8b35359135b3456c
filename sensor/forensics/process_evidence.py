"""What a case keeps of one process of a frozen container, read from /proc: its readable
memory (through /proc/PID/mem, by its maps), its executable, and a description (cmdline,
cwd, status, namespaces, open fds, environment with secret-looking values redacted).

Every part that cannot be read is listed as missing with the reason, never dropped in
silence: a process may exit mid-capture, and some mappings ([vvar]) cannot be read.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

import msgpack

from sensor.forensics.store import Case
from sensor.records import untrusted_text

DEFAULT_MEMORY_BYTES = 256 << 20      # per process: the readable mappings, in map order
DEFAULT_EXECUTABLE_BYTES = 64 << 20
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
# An environment variable whose name says it holds a secret has its value redacted.
SECRET_NAME = re.compile(rb"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE|SESSION|COOKIE", re.IGNORECASE)
REDACTED = "<redacted>"
# The kernel's own pages mapped into every process (the vDSO's data): /proc/PID/mem
# never reads them, and they hold nothing of the process.
KERNEL_MAPPINGS = frozenset({"[vvar]", "[vvar_vclock]"})


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    executable_bytes: int = DEFAULT_EXECUTABLE_BYTES
    redact_environment: bool = True


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    path: str

    @property
    def size(self) -> int:
        return self.end - self.start


def mappings(pid: int) -> list[Mapping]:
    """/proc/PID/maps, parsed."""
    found = []
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            parts = line.rstrip(b"\n").split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split(b"-"))
            path = parts[5].decode(errors="backslashreplace") if len(parts) > 5 else ""
            found.append(Mapping(start, end, parts[1].decode(), int(parts[2], 16), path))
    return found


def capture(case: Case, pid: int, limits: Limits) -> dict:
    """The process's artifacts into `case`; its description (also stored, as
    `process/<pid>.msgpack`)."""
    where = f"process {pid}"
    described: dict = {"pid": pid}
    for name, read in (("exe", lambda: os.readlink(f"/proc/{pid}/exe")),
                       ("cwd", lambda: os.readlink(f"/proc/{pid}/cwd")),
                       ("cmdline", lambda: [untrusted_text(a) for a in _read(pid, "cmdline").split(b"\0")[:-1]]),
                       ("status", lambda: _status(_read(pid, "status"))),
                       ("namespaces", lambda: _namespaces(pid)),
                       ("fds", lambda: _fds(pid)),
                       ("environment", lambda: _environment(_read(pid, "environ"), limits.redact_environment))):
        try:
            described[name] = read()
        except OSError as e:
            case.missing(f"{where} {name}", _why(e))
    try:
        maps = mappings(pid)
    except OSError as e:
        case.missing(f"{where} memory", _why(e))
    else:
        described["memory"] = _memory(case, pid, maps, limits.memory_bytes)
    described["executable"] = _executable(case, pid, limits.executable_bytes)
    case.add("process", f"{pid}.msgpack", msgpack.packb(described, use_bin_type=True))
    return described


def _memory(case: Case, pid: int, maps: list[Mapping], cap: int) -> dict:
    """Each readable mapping as its own artifact (`memory/<pid>/<start>-<end>`: a library
    mapped by a thousand containers is one blob), until `cap` bytes are read."""
    taken = skipped = 0
    kernel = []
    try:
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError as e:
        case.missing(f"process {pid} memory", _why(e))
        return {"read_bytes": 0, "cap_bytes": cap}
    try:
        for region in maps:
            if not region.perms.startswith("r"):
                continue
            if region.path in KERNEL_MAPPINGS:
                kernel.append(region.path)
                continue
            name = f"{pid}/{region.start:x}-{region.end:x}"
            if taken + region.size > cap:
                skipped += region.size
                case.missing(f"memory {name} {region.path}".rstrip(), f"over the memory cap of {cap} bytes for this process")
                continue
            try:
                data = os.pread(mem, region.size, region.start)
            except OSError as e:
                case.missing(f"memory {name} {region.path}".rstrip(), _why(e))
                continue
            taken += len(data)
            case.add("memory", name, data, perms=region.perms, offset=region.offset, path=region.path,
                     address=region.start)
    finally:
        os.close(mem)
    return {"read_bytes": taken, "cap_bytes": cap, "over_cap_bytes": skipped, "kernel_mappings_skipped": kernel}


def _executable(case: Case, pid: int, cap: int) -> dict | None:
    """The executable's bytes as the process runs them (/proc/PID/exe: the file even if
    it was deleted or replaced since)."""
    try:
        with open(f"/proc/{pid}/exe", "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        case.missing(f"process {pid} executable", _why(e))
        return None
    if len(data) > cap:
        case.missing(f"process {pid} executable", f"larger than the cap of {cap} bytes")
        return None
    case.add("executable", f"{pid}", data)
    return {"bytes": len(data)}


def _read(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def _status(raw: bytes) -> dict[str, str]:
    fields = {}
    for line in raw.decode(errors="backslashreplace").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _namespaces(pid: int) -> dict[str, str]:
    found = {}
    for name in NAMESPACES:
        try:
            found[name] = os.readlink(f"/proc/{pid}/ns/{name}")
        except FileNotFoundError:
            continue  # a namespace this kernel does not have
    return found


def _fds(pid: int) -> dict[int, str | bytes]:
    found = {}
    directory = f"/proc/{pid}/fd"
    for fd in os.listdir(directory):
        try:
            found[int(fd)] = untrusted_text(os.fsencode(os.readlink(f"{directory}/{fd}")))
        except FileNotFoundError:
            continue  # closed meanwhile
    return found


def _environment(raw: bytes, redact: bool) -> list[str | bytes]:
    entries = []
    for entry in raw.split(b"\0"):
        if not entry:
            continue
        name, eq, _ = entry.partition(b"=")
        if redact and eq and SECRET_NAME.search(name):
            entry = name + b"=" + REDACTED.encode()
        entries.append(untrusted_text(entry))
    return entries


def _why(error: OSError) -> str:
    if isinstance(error, (FileNotFoundError, ProcessLookupError)) or error.errno == errno.ESRCH:
        return "the process exited"
    return error.strerror or str(error)

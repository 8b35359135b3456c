"""Falco's field names, with Falco's meaning, read from Mayfly's `event` records.

`lookup(name)` gives the field a condition names, or None when Mayfly cannot provide
it (a rule that uses it is rejected, saying which field). A field's value for a record
is a str, an int, a tuple of str (any of which may match, as Falco's `proc.aname`
without an index), or None when the record does not have it (only `exists`, `!=`
and `not` can then be true).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sensor.kernel import syscalls
from sensor.system import uapi
from sensor.detect.domains import DOMAINS
from sensor.identity.processes import capability_text
from sensor.kernel.syscalls import OPENS

Record = dict[str, Any]
Value = str | int | tuple | None

_TYPECHARS = {"file": "f", "directory": "d", "ipv4": "4", "ipv6": "6", "unix": "u", "pipe": "p", "netlink": "n",
              "memfd": "f"}
_OPEN_FLAGS = [(name, getattr(os, name)) for name in (
    "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DSYNC", "O_DIRECT", "O_LARGEFILE",
    "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_SYNC", "O_PATH", "O_TMPFILE") if hasattr(os, name)]
_ACCESS = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}


def text(value: Any) -> Any:
    """Untrusted bytes compared as text (undecodable bytes kept as surrogates)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def open_flags_text(flags: int) -> str:
    """Open flags as Falco renders them: the access mode, then the flags set."""
    names = [_ACCESS.get(flags & os.O_ACCMODE, "O_RDWR")]
    names += [name for name, bit in _OPEN_FLAGS if bit and flags & bit == bit]
    return "|".join(names)


@dataclass(frozen=True)
class Field:
    name: str
    get: Callable[[Record, str | None], Value]
    indexed: bool = False  # takes [N] (proc.aname[2]) or a name (evt.arg.flags)
    network: bool = False  # an address compared with networks: fd.snet in ("10.0.0.0/8")
    # What the value is a function of (sensor.detect.rows): the record's "evt", "proc" or
    # "container" alone, or "record" (its time, or state that changes over time); "host":
    # the host's, for policy files only.
    part: str = "evt"


def _evt(record: Record) -> dict:
    return record.get("evt") or {}


def _proc(record: Record) -> dict:
    return record.get("proc") or {}


def _split(cmdline: Any) -> tuple[str, str]:
    """argv[0] and the rest of a command line joined by spaces."""
    head, _, rest = text(cmdline or "").partition(" ")
    return head, rest


def _evt_res(record: Record, _) -> Value:
    res = _evt(record).get("res")
    if res is None:
        return None
    return "SUCCESS" if res >= 0 else errno.errorcode.get(-res, str(res))


def _evt_arg(record: Record, name: str | None) -> Value:
    evt = _evt(record)
    value = evt.get(name)
    render = _RENDERED.get((evt.get("type"), name))
    if render is not None and isinstance(value, int):
        return render(value)
    if isinstance(value, (list, tuple)):
        return " ".join(str(text(v)) for v in value)
    return text(value) if isinstance(value, (str, bytes, int)) else (None if value is None else str(value))


def _family(value: int) -> str:
    try:
        return socket.AddressFamily(value).name
    except ValueError:
        return str(value)


# Arguments Falco renders as names: evt.arg.flags of an open, evt.arg.request of ptrace...
_RENDERED: dict[tuple[str, str], Callable[[int], str]] = {
    **{(name, "flags"): open_flags_text for name in OPENS},
    ("ptrace", "request"): lambda value: uapi.ptrace_requests().get(value, str(value)),
    **{(name, "domain"): _family for name in ("socket", "socketpair")},
}


def _open_mode(record: Record) -> int | None:
    evt = _evt(record)
    if evt.get("type") not in OPENS or evt.get("res", -1) < 0:
        return None
    return syscalls.open_flags(evt) & os.O_ACCMODE


def _fd(record: Record) -> dict | None:
    """What the event's fd is: the one it names, or the one an open made."""
    evt = _evt(record)
    if isinstance(evt.get("fd"), dict):  # the fd note (an argument named fd is its number)
        return evt["fd"]
    if evt.get("type") in OPENS and evt.get("res", -1) >= 0:
        directory = syscalls.open_flags(evt) & os.O_DIRECTORY
        return {"num": evt["res"], "type": "directory" if directory else "file", "name": text(evt.get("name"))}
    return None


def _fd_field(get: Callable[[dict], Value]) -> Callable[[Record, Any], Value]:
    def field(record: Record, _) -> Value:
        fd = _fd(record)
        return None if fd is None else get(fd)
    return field


def _file_name(fd: dict) -> Value:
    return text(fd.get("name")) if fd.get("type") in ("file", "directory", "memfd") else None


def _endpoint(fd: dict, role: str, part: str) -> Value:
    """Server or client address/port of a socket fd (Falco's sip/sport, cip/cport):
    the server is the remote end of a client's connection, the local end of an
    accepted one."""
    local, remote = fd.get("local") or {}, fd.get("remote") or {}
    if fd.get("role") == "client":
        server, client = remote, local
    else:
        server, client = local, remote
    address = server if role == "server" else client
    return address.get(part)


def _either(fd: dict, part: str) -> Value:
    values = tuple(v for v in ((fd.get("local") or {}).get(part), (fd.get("remote") or {}).get(part)) if v is not None)
    return values or None


def _anames(record: Record, index: str | None) -> Value:
    names = tuple(text(n) for n in _proc(record).get("anames") or ())
    if index is None:
        return names
    n = int(index)
    return names[n - 1] if 0 < n <= len(names) else (text(_proc(record).get("comm")) if n == 0 else None)


def _tuple(values) -> tuple | None:
    return tuple(text(v) for v in values) if isinstance(values, (list, tuple)) else None


def _bool(value: bool | None) -> str | None:
    """Falco's booleans compare as the words true and false."""
    return None if value is None else ("true" if value else "false")


_SOCKETS = ("ipv4", "ipv6", "unix")
_NAMING = ("connect", "accept", "accept4", "bind")  # the syscalls that give a socket its name


def _container(*path: str) -> Callable[[Record, Any], Value]:
    def field(record: Record, _) -> Value:
        value: Any = record.get("container") or {}
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return text(value)
    return field


def _image(key: str) -> Callable[[Record, Any], Value]:
    """An image field: empty in a container whose image does not say (an unpinned image's
    digest, a bare runc container's name), as in Falco; none on the host."""
    def field(record: Record, _) -> Value:
        container = record.get("container") or {}
        if container.get("id", "host") == "host":
            return None
        return text((container.get("image") or {}).get(key) or "")
    return field


_FIELDS = [
    Field("evt.type", lambda r, _: _evt(r).get("type")),
    # Mayfly does not number events, so evt.num never matches: Falco's tuning macro
    # never_true (evt.num=0) stays never true, which is all rules ask of it.
    Field("evt.num", lambda r, _: None),
    Field("evt.dir", lambda r, _: "<"),  # Mayfly's syscall records are whole: enter and exit in one
    Field("evt.res", _evt_res),
    Field("evt.rawres", lambda r, _: _evt(r).get("res")),
    Field("evt.failed", lambda r, _: None if _evt(r).get("res") is None else int(_evt(r)["res"] < 0)),
    Field("evt.arg", _evt_arg, indexed=True),
    Field("evt.is_open_read", lambda r, _: None if _open_mode(r) is None else _bool(_open_mode(r) != os.O_WRONLY)),
    Field("evt.is_open_write", lambda r, _: None if _open_mode(r) is None else _bool(_open_mode(r) != os.O_RDONLY)),
    Field("proc.name", lambda r, _: text(_proc(r).get("comm")), part="proc"),
    Field("proc.pid", lambda r, _: _proc(r).get("pid"), part="proc"),
    Field("proc.ppid", lambda r, _: _proc(r).get("ppid"), part="proc"),
    Field("proc.exepath", lambda r, _: text(_proc(r).get("exe")), part="proc"),
    Field("proc.exe", lambda r, _: _split(_proc(r).get("cmdline"))[0] or None, part="proc"),
    Field("proc.args", lambda r, _: _split(_proc(r).get("cmdline"))[1] if "cmdline" in _proc(r) else None, part="proc"),
    Field("proc.cmdline", lambda r, _: " ".join(filter(None, (text(_proc(r).get("comm")),
                                                              _split(_proc(r).get("cmdline"))[1]))), part="proc"),
    Field("proc.pname", lambda r, _: text(_proc(r).get("pname")), part="proc"),
    Field("proc.pexepath", lambda r, _: text(_proc(r).get("pexe")), part="proc"),
    Field("proc.pexe", lambda r, _: _split(_proc(r).get("pcmdline"))[0] or None, part="proc"),
    Field("proc.pcmdline", lambda r, _: None if "pcmdline" not in _proc(r) else " ".join(
        filter(None, (text(_proc(r).get("pname")), _split(_proc(r)["pcmdline"])[1]))), part="proc"),
    Field("proc.aname", _anames, indexed=True, part="proc"),
    Field("user.uid", lambda r, _: _proc(r).get("uid"), part="proc"),
    Field("group.gid", lambda r, _: _proc(r).get("gid"), part="proc"),
    Field("fd.num", _fd_field(lambda fd: fd.get("num"))),
    Field("fd.type", _fd_field(lambda fd: fd.get("type"))),
    Field("fd.typechar", _fd_field(lambda fd: _TYPECHARS.get(fd.get("type"), "o"))),
    Field("fd.name", _fd_field(lambda fd: text(fd.get("name")))),
    Field("fd.directory", _fd_field(lambda fd: posixpath.dirname(n) if (n := _file_name(fd)) else None)),
    Field("fd.filename", _fd_field(lambda fd: posixpath.basename(n) if (n := _file_name(fd)) else None)),
    Field("fd.l4proto", _fd_field(lambda fd: fd.get("l4proto"))),
    Field("fd.sip", _fd_field(lambda fd: _endpoint(fd, "server", "addr"))),
    Field("fd.sport", _fd_field(lambda fd: _endpoint(fd, "server", "port"))),
    Field("fd.cip", _fd_field(lambda fd: _endpoint(fd, "client", "addr"))),
    Field("fd.cport", _fd_field(lambda fd: _endpoint(fd, "client", "port"))),
    Field("fd.lip", _fd_field(lambda fd: (fd.get("local") or {}).get("addr"))),
    Field("fd.lport", _fd_field(lambda fd: (fd.get("local") or {}).get("port"))),
    Field("fd.rip", _fd_field(lambda fd: (fd.get("remote") or {}).get("addr"))),
    Field("fd.rport", _fd_field(lambda fd: (fd.get("remote") or {}).get("port"))),
    # Filter-only fields that match either end, as in Falco
    Field("fd.ip", _fd_field(lambda fd: _either(fd, "addr"))),
    Field("fd.port", _fd_field(lambda fd: _either(fd, "port"))),
    Field("fd.net", _fd_field(lambda fd: _either(fd, "addr")), network=True),
    Field("fd.snet", _fd_field(lambda fd: _endpoint(fd, "server", "addr")), network=True),
    Field("fd.cnet", _fd_field(lambda fd: _endpoint(fd, "client", "addr")), network=True),
    Field("fd.lnet", _fd_field(lambda fd: (fd.get("local") or {}).get("addr")), network=True),
    Field("fd.rnet", _fd_field(lambda fd: (fd.get("remote") or {}).get("addr")), network=True),
    Field("fd.nameraw", _fd_field(lambda fd: text(fd.get("name")))),  # Mayfly keeps names as given
    Field("fd.connected", _fd_field(lambda fd: _bool(bool(fd.get("remote"))) if fd.get("type") in _SOCKETS else None)),
    Field("fd.name_changed", lambda r, _: None if _fd(r) is None else _bool(_evt(r).get("type") in _NAMING)),
    Field("fd.sip.name", _fd_field(lambda fd: DOMAINS.names_of(_endpoint(fd, "server", "addr"))), part="record"),
    Field("fd.cip.name", _fd_field(lambda fd: DOMAINS.names_of(_endpoint(fd, "client", "addr"))), part="record"),
    Field("fd.lip.name", _fd_field(lambda fd: DOMAINS.names_of((fd.get("local") or {}).get("addr"))), part="record"),
    Field("fd.rip.name", _fd_field(lambda fd: DOMAINS.names_of((fd.get("remote") or {}).get("addr"))), part="record"),
    Field("proc.cwd", lambda r, _: None if _proc(r).get("cwd") is None else text(_proc(r)["cwd"]).rstrip("/") + "/",
          part="proc"),
    Field("proc.tty", lambda r, _: _proc(r).get("tty"), part="proc"),
    Field("proc.duration", lambda r, _: None if _proc(r).get("start_ts") is None
          else max(0, r.get("ts", 0) - _proc(r)["start_ts"]), part="record"),
    Field("proc.is_exe_from_memfd", lambda r, _: _bool(_proc(r).get("exe_from_memfd")), part="proc"),
    Field("proc.is_exe_upper_layer", lambda r, _: _bool(_proc(r).get("exe_upper_layer")), part="proc"),
    Field("thread.cap_effective", lambda r, _: None if _proc(r).get("cap_effective") is None
          else capability_text(_proc(r)["cap_effective"]), part="proc"),
    Field("user.name", lambda r, _: text(_proc(r).get("user")), part="proc"),
    Field("group.name", lambda r, _: text(_proc(r).get("group")), part="proc"),
    Field("container.privileged", lambda r, _: _bool((r.get("container") or {}).get("privileged")), part="container"),
    Field("container.id", _container("id"), part="container"),
    Field("container.name", _container("name"), part="container"),
    Field("container.image", _image("name"), part="container"),
    Field("container.image.repository", _image("repository"), part="container"),
    Field("container.image.tag", _image("tag"), part="container"),
    Field("container.image.digest", _image("digest"), part="container"),
    Field("container.type", _container("runtime"), part="container"),
    Field("container.label", lambda r, key: text(((r.get("container") or {}).get("labels") or {}).get(key)),
          indexed=True, part="container"),
    Field("container.capabilities", lambda r, _: _tuple((r.get("container") or {}).get("capabilities")),
          part="container"),
    Field("container.host_mounts", lambda r, _: _tuple((r.get("container") or {}).get("host_mounts")),
          part="container"),
    Field("container.user", _container("user"), part="container"),
    Field("k8s.ns.name", _container("k8s", "pod", "namespace"), part="container"),
    Field("k8s.pod.name", _container("k8s", "pod", "name"), part="container"),
    Field("k8s.pod.uid", _container("k8s", "pod", "uid"), part="container"),
    # This host's facts and live state, which policy files read (sensor/policy); events
    # do not carry them, so a rule that names one is rejected.
    Field("host.name", lambda r, _: (r.get("host") or {}).get("name"), part="host"),
    Field("host.kernel", lambda r, _: (r.get("host") or {}).get("kernel"), part="host"),
    Field("host.label", lambda r, key: ((r.get("host") or {}).get("labels") or {}).get(key), indexed=True,
          part="host"),
    Field("host.image_cases", lambda r, _: (r.get("host") or {}).get("image_cases"), part="host"),
    Field("host.running", lambda r, _: (r.get("host") or {}).get("running"), part="host"),
]
FIELDS = {f.name: f for f in _FIELDS}
_NAME = re.compile(r"(?P<base>[\w.]+?)(?:\[(?P<index>[^\]]*)\]|\.(?P<arg>\w+))")


def lookup(name: str) -> tuple[Field, str | None] | None:
    """The field and its index or argument name ("proc.aname[2]" -> aname, "2";
    "evt.arg.flags" -> evt.arg, "flags"), or None when Mayfly does not provide it."""
    field = FIELDS.get(name)
    if field is not None:
        return None if field.name == "evt.arg" else (field, None)  # evt.arg needs a name
    match = _NAME.fullmatch(name)
    field = FIELDS.get(match["base"]) if match else None
    if field is None or not field.indexed:
        return None
    index = match["index"] if match["index"] is not None else match["arg"]
    if field.name == "proc.aname" and not (index or "").isdigit():
        return None
    return field, index


def value(name: str, record: Record) -> Value:
    """A field's value for a record; None when the record lacks it or Mayfly does not
    provide the field."""
    found = lookup(name)
    return found[0].get(record, found[1]) if found else None

"""Falco's fields and operators on Mayfly's records, including rules of Falco's own file
evaluated on records shaped as the kernel tier's containers make them. Every test runs
against both implementations (the `matcher` fixture): the reference evaluator and the
compiled engine."""

import os

import pytest

from sensor.detect import rule_loader
from sensor.detect.condition import parse
from sensor.detect.domains import DOMAINS
from sensor.detect.fields import lookup, open_flags_text


def record(evt, container=None, **proc):
    return {"v": 1, "kind": "event", "ts": 1, "host": "h",
            "container": container or {"id": "mayfly-abc", "runtime": "runc", "cgroup_id": 42},
            "proc": {"pid": 10, "tid": 10, "ppid": 9, "uid": 0, "gid": 0, "comm": "cat", "exe": "/bin/cat",
                     "cmdline": "/bin/cat /etc/shadow", "pname": "sh", "pexe": "/bin/sh", "pcmdline": "sh -c cat",
                     "anames": ["sh", "containerd-shim", "systemd"], **proc},
            "evt": evt}


OPEN_SHADOW = record({"type": "openat", "res": 3, "dirfd": -100, "name": "/etc/shadow",
                      "flags": os.O_RDONLY | os.O_CLOEXEC, "mode": 0})


@pytest.mark.parametrize("condition, expected", [
    ("evt.type = openat and evt.dir = <", True),
    ("evt.type in (open, openat) and fd.name = /etc/shadow", True),
    ("fd.directory = /etc and fd.filename = shadow and fd.typechar = f and fd.num = 3", True),
    ("evt.is_open_read = true and evt.is_open_write = false", True),
    ("evt.arg.flags contains O_RDONLY and evt.arg.flags contains O_CLOEXEC", True),
    ("evt.arg.flags contains O_CREAT", False),
    ("evt.res = SUCCESS and evt.rawres >= 3 and evt.rawres < 4", True),
    ("proc.name = cat and proc.exe = /bin/cat and proc.exepath = /bin/cat", True),
    ("proc.args = /etc/shadow and proc.cmdline = 'cat /etc/shadow'", True),
    ("proc.pname = sh and proc.pexe = sh and proc.pexepath = /bin/sh and proc.pcmdline = 'sh -c cat'", True),
    ("proc.aname[1] = sh and proc.aname[2] = containerd-shim and proc.aname[3] = systemd", True),
    ("proc.aname[4] exists", False),
    ("proc.aname = systemd and proc.aname in (containerd-shim) and not proc.aname = init", True),
    ("proc.aname != sh", False),
    ("fd.name startswith /etc and fd.name endswith adow and fd.name contains /sha", True),
    ("fd.name icontains SHADOW and fd.name glob '/etc/*' and fd.name pmatch (/usr, /etc)", True),
    ("fd.name pmatch (/et)", False),
    ("fd.sip exists", False),
    ("not fd.sip = 1.2.3.4", True),  # a field the event lacks: every check false, `not` inverts it
    ("container.id = mayfly-abc and container.id != host and user.uid = 0", True),
    ("proc.pid > 9 and proc.ppid <= 9 and proc.pid != 11", True),
    ("evt.num = 0", False),
])
def test_fields_and_operators_on_an_open(matcher, condition, expected):
    assert matcher(parse(condition), OPEN_SHADOW) is expected


def test_failed_syscalls_say_their_errno(matcher):
    failed = record({"type": "openat", "res": -2, "dirfd": -100, "name": "/nope", "flags": 0, "mode": 0})
    assert matcher(parse("evt.res = ENOENT and evt.rawres = -2 and evt.failed = 1"), failed)
    assert not matcher(parse("fd.name exists"), failed)  # no fd was made


CONNECTED = {"num": 0, "type": "ipv4", "name": "->10.0.0.9:4444", "l4proto": "tcp", "role": "client",
             "local": {"family": "inet", "addr": "172.17.0.2", "port": 40000},
             "remote": {"family": "inet", "addr": "10.0.0.9", "port": 4444}}


@pytest.mark.parametrize("condition, expected", [
    ("fd.sip = 10.0.0.9 and fd.sport = 4444 and fd.cip = 172.17.0.2 and fd.cport = 40000", True),
    ("fd.rip = 10.0.0.9 and fd.lport = 40000 and fd.rport = 4444 and fd.l4proto = tcp", True),
    ("fd.ip = 172.17.0.2 and fd.port = 4444", True),
    ("fd.snet in ('10.0.0.0/8', '192.168.0.0/16') and not fd.cnet = '10.0.0.0/8'", True),
    ("fd.net = '172.16.0.0/12' and fd.rnet = '10.0.0.0/24'", True),
    ("fd.typechar = 4 and fd.type in (ipv4, ipv6) and fd.num = 0", True),
])
def test_socket_fields(matcher, condition, expected):
    dup = record({"type": "dup2", "res": 0, "oldfd": 3, "newfd": 0, "fd": CONNECTED})
    assert matcher(parse(condition), dup) is expected


def test_open_flags_render_as_falco_does():
    assert open_flags_text(os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == "O_WRONLY|O_CREAT|O_TRUNC"
    assert open_flags_text(os.O_RDONLY) == "O_RDONLY"


@pytest.mark.parametrize("name, known", [
    ("proc.aname", True), ("proc.aname[2]", True), ("proc.aname[x]", False), ("evt.arg.flags", True),
    ("evt.arg", False), ("user.loginuid", False), ("proc.aexepath[2]", False), ("container.image.tag", True),
])
def test_lookup_knows_what_mayfly_provides(name, known):
    assert (lookup(name) is not None) is known


def test_falcos_own_rules_on_mayfly_records(matcher, falco_corpus):
    conditions = rule_loader.load([falco_corpus / "falco_rules.yaml"]).conditions
    redirect = conditions["Redirect STDOUT/STDIN to Network Connection in Container"]
    reverse_shell = record({"type": "dup2", "res": 0, "oldfd": 3, "newfd": 0, "fd": CONNECTED}, comm="sh")
    into_pipe = record({"type": "dup2", "res": 1, "oldfd": 4, "newfd": 1,
                        "fd": {"num": 1, "type": "pipe", "name": ""}}, comm="sh")
    on_host = dict(reverse_shell, container={"id": "host", "cgroup_id": 1})
    assert matcher(redirect, reverse_shell)
    assert not matcher(redirect, into_pipe) and not matcher(redirect, on_host)
    symlink = conditions["Create Symlink Over Sensitive Files"]
    assert matcher(symlink, record({"type": "symlinkat", "res": 0, "target": "/etc/shadow", "newdirfd": -100,
                                     "linkpath": "/tmp/s"}, comm="ln"))
    assert not matcher(symlink, record({"type": "symlinkat", "res": 0, "target": "/tmp/a", "newdirfd": -100,
                                         "linkpath": "/tmp/s"}, comm="ln"))


RICH = record({"type": "execve", "res": 0, "filename": "/dev/shm/x", "argv": ["./x"]}, comm="x",
              tty=34816, cwd="/dev/shm", cap_effective=(1 << 21) | (1 << 16), start_ts=1,
              exe_from_memfd=True, exe_upper_layer=False, user="www-data", group="www-data")
RICH["ts"] = 4_000_000_001
RICH["container"]["privileged"] = True


@pytest.mark.parametrize("condition, expected", [
    ("proc.tty != 0 and proc.tty = 34816", True),
    ("proc.cwd = /dev/shm/ and proc.cwd startswith /dev/shm/", True),
    ("thread.cap_effective contains CAP_SYS_ADMIN and thread.cap_effective icontains sys_module", True),
    ("thread.cap_effective contains CAP_DAC_OVERRIDE", False),
    ("proc.duration <= 5000000000 and proc.duration = 4000000000", True),
    ("proc.is_exe_from_memfd = true and proc.is_exe_upper_layer = false", True),
    ("user.name = www-data and group.name in (www-data, nogroup)", True),
    ("container.privileged = true", True),
])
def test_process_details_and_names(matcher, condition, expected):
    assert matcher(parse(condition), RICH) is expected


def test_what_is_not_known_matches_nothing(matcher):
    bare = record({"type": "execve", "res": 0, "filename": "/bin/x"})
    for condition in ("proc.tty exists", "proc.cwd exists", "thread.cap_effective exists", "proc.duration exists",
                      "proc.is_exe_from_memfd exists", "user.name exists", "container.privileged exists"):
        assert not matcher(parse(condition), bare), condition


def test_socket_state_fields(matcher):
    connect = record({"type": "connect", "res": 0, "fd": CONNECTED})
    dup = record({"type": "dup2", "res": 0, "oldfd": 3, "newfd": 0, "fd": CONNECTED})
    assert matcher(parse("fd.connected = true and fd.name_changed = true"), connect)
    assert matcher(parse("fd.connected = true and fd.name_changed = false"), dup)
    assert not matcher(parse("fd.connected exists"), OPEN_SHADOW)  # a file


def test_server_names_are_resolved_domains(matcher):
    DOMAINS.watch(["localhost"])
    DOMAINS.resolve_now()
    local = dict(CONNECTED, remote={"family": "inet", "addr": "127.0.0.1", "port": 6443})
    assert matcher(parse("fd.sip.name = localhost"), record({"type": "connect", "res": 0, "fd": local}))
    assert not matcher(parse("fd.sip.name = localhost"), record({"type": "connect", "res": 0, "fd": CONNECTED}))


@pytest.mark.parametrize("evt, condition", [
    ({"type": "ptrace", "res": 0, "request": 0, "pid": 0}, "evt.arg.request contains PTRACE_TRACEME"),
    ({"type": "ptrace", "res": 0, "request": 0x4206, "pid": 7}, "evt.arg.request = PTRACE_SEIZE"),
    ({"type": "socket", "res": 3, "domain": 17, "socktype": 3, "protocol": 768}, "evt.arg.domain contains AF_PACKET"),
])
def test_enumerated_arguments_render_as_falco_names_them(matcher, evt, condition):
    assert matcher(parse(condition), record(evt))

"""Falco's condition syntax: precedence, operators, values, errors with offsets, and
the expansion of macros and lists."""

import pytest

from sensor.detect.condition import And, Check, ConditionError, MacroRef, Not, Or, expand, fields, parse


def test_not_binds_tighter_than_and_than_or():
    assert parse("a.x = 1 or not b.y = 2 and c.z = 3") == Or((
        Check("a.x", "=", "1"), And((Not(Check("b.y", "=", "2")), Check("c.z", "=", "3")))))
    assert parse("(a.x = 1 or b.y = 2) and not (c.z = 3)") == And((
        Or((Check("a.x", "=", "1"), Check("b.y", "=", "2"))), Not(Check("c.z", "=", "3"))))


@pytest.mark.parametrize("text, expected", [
    ("evt.dir=<", Check("evt.dir", "=", "<")),
    ("evt.type == open", Check("evt.type", "=", "open")),
    ("fd.num>=3", Check("fd.num", ">=", "3")),
    ("proc.aname[2] != sh", Check("proc.aname[2]", "!=", "sh")),
    ("fd.name startswith /etc/", Check("fd.name", "startswith", "/etc/")),
    ("proc.cmdline icontains 'Base64 -d'", Check("proc.cmdline", "icontains", "Base64 -d")),
    ("fd.name glob '/home/*/.ssh/*'", Check("fd.name", "glob", "/home/*/.ssh/*")),
    ("evt.arg.flags contains O_CREAT", Check("evt.arg.flags", "contains", "O_CREAT")),
    ("fd.name pmatch (/etc, /usr/bin)", Check("fd.name", "pmatch", ("/etc", "/usr/bin"))),
    ("proc.name in ()", Check("proc.name", "in", ())),
    ("ka.req.volumes intersects (a,b)", Check("ka.req.volumes", "intersects", ("a", "b"))),
    ("proc.pname exists", Check("proc.pname", "exists")),
    ("container.mount.dest[/var/run/docker.sock] != N/A",
     Check("container.mount.dest[/var/run/docker.sock]", "!=", "N/A")),
    ('proc.cmdline = "say \\"hi\\" C:\\\\x \\\\d"', Check("proc.cmdline", "=", 'say "hi" C:\\x \\d')),
    ("spawned_process", MacroRef("spawned_process", 0)),
    ("proc.name in (sh, 'a b', \"c,d\")", Check("proc.name", "in", ("sh", "a b", "c,d"))),
])
def test_checks(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("text, reason, offset", [
    ("", "empty condition", 0),
    ("proc.name =", "expected a value", 11),
    ("proc.name sh", "expected an operator after proc.name, not 'sh'", 10),
    ("(proc.name = sh", "expected ')'", 15),
    ("proc.name in sh", "expected '(' to open a list", 13),
    ("proc.name in (a b)", "expected ',' or ')' in a list", 16),
    ("proc.name = 'open", "unterminated string", 12),
    ("proc.name = a b.c = d", "unexpected 'b.c = d'", 14),
    ("and", "expected a field, a macro or '('", 0),
])
def test_errors_say_what_and_where(text, reason, offset):
    with pytest.raises(ConditionError) as error:
        parse(text)
    assert (error.value.reason, error.value.offset) == (reason, offset)


def test_expansion_replaces_macros_and_list_names():
    macros = {"open_write": parse("evt.type in (open, openat) and fd.typechar = f"),
              "outer": parse("open_write and proc.name in (editors)")}
    lists = {"editors": ("vi", "nano")}
    expanded = expand(parse("outer and not proc.name in (editors, ed)"), macros, lists)
    assert expanded == And((
        And((And((Check("evt.type", "in", ("open", "openat")), Check("fd.typechar", "=", "f"))),
             Check("proc.name", "in", ("vi", "nano")))),
        Not(Check("proc.name", "in", ("vi", "nano", "ed")))))
    assert fields(expanded) == {"evt.type", "fd.typechar", "proc.name"}


def test_undefined_and_cyclic_macros_are_errors():
    with pytest.raises(ConditionError, match="undefined macro nope"):
        expand(parse("evt.num > 1 and nope"), {}, {})
    macros = {"a": parse("b"), "b": parse("a")}
    with pytest.raises(ConditionError, match=r"macro a refers to itself \(a -> b -> a\)"):
        expand(parse("a"), macros, {})

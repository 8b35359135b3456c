"""Needles: which rules' events the kernel can tell apart before it sends them."""

from sensor import resources
from sensor.detect import needles, rule_loader
from sensor.kernel.control import Needle
from sensor.testing.events import C, TABLE


def derive(tmp_path, text):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return needles.derive(rule_loader.load([path]))


def rule(name, priority, condition):
    return f"- rule: {name}\n  desc: d\n  output: o\n  priority: {priority}\n  condition: {condition}\n"


def test_rules_at_warning_or_above_on_open_paths_give_needles(tmp_path):
    found, covered, _ = derive(tmp_path, "- macro: sensitive\n  condition: fd.name in (/etc/shadow, /etc/gshadow)\n"
                            + rule("exact", "CRITICAL", "evt.type = openat and sensitive and proc.name != sh")
                            + rule("prefix", "WARNING", "evt.type in (open, openat) and (fd.name startswith /root/ "
                                   "or fd.directory in (/etc/sudoers.d, /etc/pam.d/))"))
    assert covered == ["exact", "prefix"]
    assert found == {Needle("openat", "/etc/shadow", True), Needle("openat", "/etc/gshadow", True),
                     *(Needle(s, p, False) for s in ("open", "openat")
                       for p in ("/root/", "/etc/sudoers.d/", "/etc/pam.d/"))}
    assert Needle("openat", "/etc/shadow", True).key() == b"/etc/shadow\0"


def test_rules_the_kernel_cannot_tell_apart_give_none(tmp_path):
    found, covered, _ = derive(tmp_path, "".join([
        rule("below warning", "NOTICE", "evt.type = openat and fd.name = /etc/shadow"),
        rule("other types too", "ERROR", "evt.type in (openat, unlinkat) and fd.name = /etc/shadow"),
        rule("no type", "ERROR", "fd.name = /etc/shadow"),
        rule("relative", "ERROR", "evt.type = openat and fd.name = shadow"),
        rule("path or process", "ERROR", "evt.type = openat and (fd.name = /etc/shadow or proc.name = sh)"),
        rule("too long", "ERROR", f"evt.type = openat and fd.name = /{'x' * C['MAYFLY_NEEDLE_LEN']}"),
    ]))
    assert (found, covered) == (set(), [])


def test_a_rule_is_covered_with_all_its_needles_or_named_as_left_out(tmp_path):
    per_rule = C["MAYFLY_MAX_NEEDLES"] // 4 + 1  # room for three such rules, not four
    found, covered, left_out = derive(tmp_path, "".join(
        rule(f"rule {r}", "ERROR", "evt.type = openat and fd.name in (" +
             ", ".join(f"/srv/{r}/{k}" for k in range(per_rule)) + ")") for r in range(5)))
    assert covered == ["rule 0", "rule 1", "rule 2"] and left_out == ["rule 3", "rule 4"]
    assert len(found) == 3 * per_rule


def test_the_built_in_file_rules_give_needles():
    found, covered, _ = needles.derive(rule_loader.load(resources.builtin_rule_files()))
    assert {"Sensitive File Read in Container", "Write Below Etc in Container"} <= set(covered)
    assert Needle("openat", "/etc/shadow", True) in found


def test_falcos_sensitive_file_rules_give_needles(falco_corpus):
    found, covered, _ = needles.derive(rule_loader.load([falco_corpus / "falco_rules.yaml"]))
    assert covered == ["Read sensitive file trusted after startup", "Read sensitive file untrusted"]
    assert Needle("openat2", "/etc/pam.d/", False) in found


def test_needle_syscalls_are_flagged_and_execs_never_ask_the_bucket():
    specs = TABLE.specs({"openat", "execve", "close"}, {"openat", "close"}, needles={"openat"})
    flags = {name: int(specs[TABLE.numbers[name]]["flags"]) for name in ("openat", "execve", "close")}
    assert flags["openat"] & C["MAYFLY_SPEC_NEEDLE"] and not flags["close"] & C["MAYFLY_SPEC_NEEDLE"]
    assert flags["execve"] & C["MAYFLY_SPEC_LIFECYCLE"] and not flags["openat"] & C["MAYFLY_SPEC_LIFECYCLE"]


def test_stopping_needles_are_the_capture_triggers_container_rules_with_the_access_they_ask():
    ruleset = rule_loader.load(resources.builtin_rule_files())
    urgent = {"EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING"}
    found, comms, covered = needles.stopping(ruleset, lambda name, priority: priority in urgent, 4096)
    assert {"Sensitive File Read in Container", "Write Below Binary Directory in Container",
            "Netcat or Socat Run in Container"} <= set(covered)
    assert comms == {"nc", "ncat", "netcat", "socat"}  # their exec stops, before the first instruction
    # A read of /etc/shadow stops; a library read below /lib does not (that rule is on writes).
    assert found[Needle("openat", "/etc/shadow", True)] == "read"
    assert found[Needle("openat", "/lib/", False)] == "write"
    assert found[Needle("creat", "/usr/bin/", False)] == "write"
    # Only what triggers a capture stops: nothing when no rule does.
    assert needles.stopping(ruleset, lambda name, priority: False, 4096) == ({}, set(), [])


def test_a_needle_of_two_stopping_rules_asking_different_access_stops_at_either(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(rule("reads", "WARNING", "evt.type = openat and evt.is_open_read = true and "
                                             "fd.name = /etc/x and container.id != host")
                    + rule("writes", "WARNING", "evt.type = openat and evt.is_open_write = true and "
                                                "fd.name = /etc/x and container.id != host")
                    + rule("host too", "WARNING", "evt.type = openat and fd.name = /etc/y")
                    + rule("by exe", "WARNING", "evt.type = execve and proc.exe = /usr/bin/x and container.id != host")
                    + rule("long name", "WARNING", "evt.type = execve and proc.name = a-name-over-15-bytes and "
                                                   "container.id != host")
                    + rule("long exe", "WARNING", f"evt.type = execve and proc.exe = /{'x' * 200} and "
                                                  "container.id != host"))
    found, comms, covered = needles.stopping(rule_loader.load([path]), lambda name, priority: True, 4096)
    assert found == {Needle("openat", "/etc/x", True): "any", Needle("execve", "/usr/bin/x", True): "any"}
    assert comms == set() and covered == ["reads", "writes", "by exe"]  # a comm holds 15 bytes, a needle 128

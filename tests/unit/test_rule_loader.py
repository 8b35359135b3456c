"""Rule files: structure checks with file and line, one bad item rejecting only itself."""

from pathlib import Path

from sensor import resources
from sensor.detect import rule_loader
from sensor.detect.condition import And, Check, Not, Or
from sensor.detect.evaluate import Reference


def test_builtin_rules_load_cleanly():
    files = resources.builtin_rule_files()
    assert [f.name for f in files] == ["mayfly_rules.yaml", "mayfly_rules-incubating.yaml"]  # stable first
    ruleset = rule_loader.load(files)
    assert ruleset.problems == []
    assert len(ruleset.rules) >= 30 and (len(ruleset.sequences), len(ruleset.rates)) == (1, 1)
    for rule in ruleset.rules:  # each with its maturity and a MITRE ATT&CK technique
        tags = rule.body["tags"]
        assert {t for t in tags if t.startswith("maturity_")} == {
            "maturity_incubating" if "incubating" in rule.path else "maturity_stable"}, rule.name
        assert any(t.startswith("mitre_") for t in tags) and any(t[:2] == "T1" for t in tags), rule.name


def test_a_broken_item_rejects_itself_only(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "- list: shells\n"
        "  items: [sh]\n"
        "- rule: No Output\n"        # line 3
        "  desc: d\n"
        "  condition: proc.name in (shells)\n"
        "  priority: NOTICE\n"
        "- rule: Bad Priority\n"     # line 7
        "  desc: d\n  condition: evt.num > 0\n  output: o\n  priority: LOUD\n"
        "- rule: Fine\n"
        "  desc: d\n  condition: proc.name in (shells)\n  output: o\n  priority: warning\n"
        "- just a string\n"          # line 17
        "- rule: Audit\n"            # line 18
        "  desc: d\n  condition: ka.verb = create\n  output: o\n  priority: INFO\n  source: k8s_audit\n"
        "- rule: Captured\n"         # line 24
        "  desc: d\n  condition: proc.name in (shells)\n  output: o\n  priority: INFO\n  capture: yes please\n"
        "- rule: Kept\n"
        "  desc: d\n  condition: proc.name in (shells)\n  output: o\n  priority: INFO\n  capture: true\n"
    )
    ruleset = rule_loader.load([path])
    assert [str(p) for p in ruleset.problems] == [
        f"{path}:3: No Output: rule lacks output",
        f"{path}:7: Bad Priority: unknown priority 'LOUD'",
        f"{path}:17: an item must be a mapping",
        f"{path}:18: Audit: source 'k8s_audit' is not supported: Mayfly's rules see syscall events only "
        "(no plugin sources)",
        f"{path}:24: Captured: capture must be true or false, not 'yes please'",
    ]
    assert [i.name for i in ruleset.items] == ["shells", "Fine", "Kept"]
    assert ruleset.items[-1].body["capture"] is True


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("- rule: x\n  desc: [unclosed\n")
    (problem,) = rule_loader.load([path]).problems
    assert problem.path == str(path) and problem.line >= 2 and "invalid YAML" in problem.reason


def test_unreadable_file_does_not_stop_the_others(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("- macro: m\n  condition: evt.num = 0\n")
    ruleset = rule_loader.load([tmp_path / "missing.yaml", good])
    assert [p.reason for p in ruleset.problems] == ["cannot read: No such file or directory"]
    assert [i.name for i in ruleset.items] == ["m"]


def test_falco_corpus_parses_expands_and_says_what_it_cannot_evaluate(falco_corpus):
    """Every condition of Falco's rule files parses and every rule expands with the
    macros and lists of the files loaded before it (incubating and sandbox build on
    falco_rules.yaml). A rule is rejected only for a field or operator Mayfly does not
    provide, naming it, at the rule's condition line; docs/falco-compat.md lists them."""
    ruleset = rule_loader.load([falco_corpus / "falco_rules.yaml"])
    assert ruleset.problems == [] and len(ruleset.conditions) == 25  # every rule of Falco's stable file
    assert "Redirect STDOUT/STDIN to Network Connection in Container" in ruleset.conditions
    everything = rule_loader.load([falco_corpus / "falco_rules.yaml", falco_corpus / "falco-incubating_rules.yaml",
                                   falco_corpus / "falco-sandbox_rules.yaml"])
    assert everything.problems == everything.rejected
    assert len(everything.conditions) + len(everything.rejected) + len(everything.disabled) == 25 + 31 + 37


def test_the_compatibility_report_is_current(falco_corpus):
    """docs/falco-compat.md is what `mayfly rules check --report` writes today."""
    names = ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
    files = [falco_corpus / name for name in names]
    command = ["mayfly", "rules", "check", *(f"../shared/compat/falco/{f.name}" for f in files)]
    report = rule_loader.markdown_report(rule_loader.load(files), command)
    docs = Path(__file__).resolve().parents[2] / "docs" / "falco-compat.md"
    assert report == docs.read_text(), \
        "regenerate it: mayfly rules check ../shared/compat/falco/*.yaml --report docs/falco-compat.md"


def write(tmp_path, text, name="rules.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_conditions_are_parsed_and_expanded_with_macros_and_lists(tmp_path):
    path = write(tmp_path, """\
- list: shells
  items: [sh, bash]
- list: all_shells
  items: [shells, zsh]
- macro: spawned
  condition: evt.type in (execve, execveat) and evt.dir = <
- rule: Shell
  desc: d
  condition: spawned and proc.name in (all_shells) and not proc.pname exists
  output: o
  priority: WARNING
""")
    ruleset = rule_loader.load([path])
    assert ruleset.problems == []
    assert ruleset.conditions["Shell"] == And((
        And((Check("evt.type", "in", ("execve", "execveat")), Check("evt.dir", "=", "<"))),
        Check("proc.name", "in", ("sh", "bash", "zsh")),
        Not(Check("proc.pname", "exists"))))


def test_a_bad_condition_names_its_line_and_rejects_what_uses_it(tmp_path):
    path = write(tmp_path, """\
- macro: broken
  condition: >
    proc.name = sh and
    (fd.name startswith /etc
- rule: Uses Broken
  desc: d
  condition: broken or evt.num > 1
  output: o
  priority: INFO
- rule: Undefined
  desc: d
  condition: nowhere
  output: o
  priority: INFO
- rule: Bad Operator
  desc: d
  condition: proc.name resembles sh
  output: o
  priority: INFO
- rule: Fine
  desc: d
  condition: proc.name = "a \\"quoted\\" name"
  output: o
  priority: INFO
""")
    ruleset = rule_loader.load([path])
    assert [str(p) for p in ruleset.problems] == [
        f"{path}:4: broken: condition: expected ')' at its end",
        f"{path}:17: Bad Operator: condition: expected an operator after proc.name, not 'resembles' at 'resembles sh'",
        f"{path}:7: Uses Broken: uses macro broken, which did not load (condition: expected ')' at its end)",
        f"{path}:12: Undefined: undefined macro nowhere",
    ]
    assert list(ruleset.conditions) == ["Fine"] and [r.name for r in ruleset.rules] == ["Fine"]
    assert ruleset.conditions["Fine"] == Check("proc.name", "=", 'a "quoted" name')


def test_append_override_and_enabled_follow_falco(tmp_path):
    base = write(tmp_path, """\
- list: bins
  items: [ls]
- macro: m
  condition: proc.name in (bins)
- rule: R
  desc: d
  condition: m
  output: o
  priority: INFO
- rule: Disabled
  desc: d
  condition: evt.num > 0
  output: o
  priority: INFO
""", "base.yaml")
    local = write(tmp_path, """\
- list: bins
  items: [cat]
  append: true
- macro: m
  condition: and evt.num > 3
  append: true
- rule: R
  condition: or proc.name = vi
  override:
    condition: append
- rule: Disabled
  enabled: false
- rule: Ghost
  condition: x
  append: true
""", "local.yaml")
    ruleset = rule_loader.load([base, local])
    assert [str(p) for p in ruleset.problems] == [f"{local}:13: Ghost: amends an undefined rule"]
    assert ruleset.conditions == {"R": Or((And((Check("proc.name", "in", ("ls", "cat")), Check("evt.num", ">", "3"))),
                                              Check("proc.name", "=", "vi")))}
    assert [r.name for r in ruleset.rules] == ["R", "Disabled"]  # loaded, and off


def test_exceptions_follow_falco(tmp_path):
    from sensor.detect.evaluate import evaluate

    path = tmp_path / "rules.yaml"
    path.write_text("""
- list: package_managers
  items: [apk, dpkg]
- rule: Write below bin
  desc: d
  condition: evt.type = openat and fd.directory = /usr/bin
  output: o
  priority: ERROR
  exceptions:
    - name: managers
      fields: proc.name
      comps: in
      values: [package_managers]
    - name: writer_and_dir
      fields: [proc.name, fd.directory]
      comps: ["=", "="]
      values:
        - [cp, /usr/bin]
- rule: Write below bin
  append: true
  exceptions:
    - name: writer_and_dir
      values:
        - [install, /usr/bin]
""")
    ruleset = rule_loader.load([path])
    assert ruleset.problems == []
    rule = ruleset.conditions["Write below bin"]

    def writes(comm):
        return evaluate(rule, {"proc": {"comm": comm}, "evt": {"type": "openat", "res": 3, "name": "/usr/bin/x",
                                                                "flags": 1}})
    assert writes("curl")
    assert not writes("apk") and not writes("dpkg")  # the list the exception names
    assert not writes("cp") and not writes("install")  # a tuple, and one an append added


def test_runc_init_mounting_its_cloned_binary_is_runtime_setup():
    """runc init, re-executed from its cloned binary (comm "exe") by the host's runc,
    mounts that binary in the new container's cgroup (seen in the e2e tier); the same
    mount by a shell in the container is not setup."""
    rules = Reference(rule_loader.load(resources.builtin_rule_files()).conditions)
    mount = {"kind": "event", "ts": 1, "container": {"id": "abc", "cgroup_id": 7},
             "evt": {"type": "mount", "res": 0, "source": "/proc/self/exe", "target": "/run/runc/abc/runc.x"}}
    runc_init = dict(mount, proc={"pid": 9, "comm": "exe", "exe": "/dev/fd/6", "cmdline": "runc init",
                                  "pname": "runc", "pexe": "/usr/sbin/runc"})
    shell = dict(mount, proc={"pid": 9, "comm": "sh", "exe": "/bin/sh", "cmdline": "sh -c mount", "pname": "runc"})
    assert [name for _, name in rules.match([runc_init, shell])] == ["Mount in Container"]
    assert rules.match([shell]) == [(0, "Mount in Container")]

"""Rule files: structure checks with file and line, one bad item rejecting only itself."""

from pathlib import Path

import pytest

from sensor import resources, rule_loader

FALCO = Path(__file__).resolve().parents[3] / "shared" / "compat" / "falco"


def test_builtin_rules_load_cleanly():
    files = resources.builtin_rule_files()
    assert [f.name for f in files] == ["mayfly_rules.yaml"]
    ruleset = rule_loader.load(files)
    assert ruleset.problems == []
    assert [r.name for r in ruleset.rules] == ["Shell Spawned in Container"]


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
        "  desc: d\n  condition: c\n  output: o\n  priority: LOUD\n"
        "- rule: Fine\n"
        "  desc: d\n  condition: c\n  output: o\n  priority: warning\n"
        "- just a string\n"          # line 17
    )
    ruleset = rule_loader.load([path])
    assert [str(p) for p in ruleset.problems] == [
        f"{path}:3: No Output: rule lacks output",
        f"{path}:7: Bad Priority: unknown priority 'LOUD'",
        f"{path}:17: an item must be a mapping",
    ]
    assert [i.name for i in ruleset.items] == ["shells", "Fine"]


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


@pytest.mark.skipif(not FALCO.is_dir(), reason="Falco's rule corpus lives in ../shared/compat/falco")
def test_falco_corpus_is_structurally_valid():
    ruleset = rule_loader.load([FALCO / "falco_rules.yaml"])
    assert ruleset.problems == []
    assert len(ruleset.rules) == 25

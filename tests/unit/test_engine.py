"""The compiled engine against the reference evaluator: random records and random
conditions (hypothesis) must give identical matches, batch after batch, also when a
field's table of values starts over. Plus what only the engine has: its type index."""

import pytest
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.detect import engine
from sensor.detect.condition import And, Check, Not, Or, parse
from sensor.detect.engine import Engine, event_types
from sensor.detect.evaluate import Reference

TYPES = ["openat", "execve", "connect", "dup2"]
PATHS = ["/etc/shadow", "/etc/passwd", "/tmp/x", "/usr/bin/sh", "", "/ETC/Shadow", "/etc"]
COMMS = ["sh", "bash", "cat", "nc"]
ADDRS = ["10.0.0.9", "192.168.1.1", "::1", "172.17.0.2"]
NUMBERS = st.integers(-3, 8)
WORDS = COMMS + PATHS + TYPES + ["host", "abc", "0", "3", "-2", "*sh*", "/etc/*", "SH"]

# field -> strategy of the values a check compares it with
FIELDS = {
    "evt.type": st.sampled_from(TYPES + ["close"]),
    "fd.name": st.sampled_from(PATHS + ["/etc/*", "*adow", "shadow"]),
    "proc.name": st.sampled_from(WORDS),
    "proc.pid": NUMBERS.map(str),
    "evt.rawres": NUMBERS.map(str),
    "proc.aname": st.sampled_from(COMMS),
    "proc.aname[2]": st.sampled_from(COMMS),
    "container.id": st.sampled_from(["host", "abc", "ab"]),
    "fd.sport": st.sampled_from(["4444", "80", "x"]),
    "fd.sip": st.sampled_from(ADDRS),
}
OPERATORS = ["=", "!=", "<", "<=", ">", ">=", "contains", "icontains", "startswith", "endswith", "glob"]


@st.composite
def checks(draw):
    field = draw(st.sampled_from(sorted(FIELDS)))
    op = draw(st.sampled_from(OPERATORS + ["in", "pmatch", "exists"]))
    if op == "exists":
        return Check(field, op)
    if op in ("in", "pmatch"):
        return Check(field, op, tuple(draw(st.lists(FIELDS[field], min_size=1, max_size=3))))
    return Check(field, op, draw(FIELDS[field]))


conditions = st.recursive(
    checks(),
    lambda inner: st.one_of(st.lists(inner, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
                            st.lists(inner, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
                            inner.map(Not)),
    max_leaves=8)


@st.composite
def records(draw):
    evt = {"type": draw(st.sampled_from(TYPES + [None]))}
    if draw(st.booleans()):
        evt["res"] = draw(NUMBERS)
    if evt["type"] == "openat":
        evt.update(name=draw(st.sampled_from(PATHS)), flags=draw(st.sampled_from([0, 1, 0o100101])), mode=0)
    if draw(st.booleans()):
        evt["fd"] = {"num": 3, "type": "file", "name": draw(st.sampled_from(PATHS))}
    elif draw(st.booleans()):
        evt["fd"] = {"num": 0, "type": "ipv4", "role": "client", "l4proto": "tcp",
                     "local": {"addr": draw(st.sampled_from(ADDRS)), "port": 40000},
                     "remote": {"addr": draw(st.sampled_from(ADDRS)), "port": draw(st.sampled_from([4444, 80]))}}
    proc = {"pid": draw(NUMBERS), "comm": draw(st.sampled_from(COMMS)),
            "anames": draw(st.lists(st.sampled_from(COMMS), max_size=4))}
    record = {"kind": "event", "ts": 1, "evt": {k: v for k, v in evt.items() if v is not None}, "proc": proc}
    if draw(st.booleans()):
        record["container"] = {"id": draw(st.sampled_from(["host", "abc"])), "cgroup_id": 7}
    return record


MATCHES: list[int] = []  # how many matches each example of the property test under way had


def requires_a_match(property_test):
    """A differential property test says nothing about matching if no example matched:
    run it (its examples add their match counts to MATCHES), and fail unless one did."""
    def test():
        MATCHES.clear()
        property_test()
        assert sum(MATCHES), "no example matched: the property was never tested on a match"
    test.__name__, test.__doc__ = property_test.__name__, property_test.__doc__
    return test


@requires_a_match
@settings(max_examples=300, deadline=None)
@given(rules=st.lists(conditions, min_size=1, max_size=5),
       batches=st.lists(st.lists(records(), max_size=20), min_size=1, max_size=3))
def test_the_engine_matches_what_the_reference_evaluator_matches(rules, batches):
    assert_same_matches(rules, batches)


def assert_same_matches(rules: list, batches: list[list[dict]]) -> None:
    named = {f"rule {i}": c for i, c in enumerate(rules)}
    compiled, reference = Engine(named), Reference(named)
    for batch in batches:  # one engine across batches: what it keeps between them must not leak
        expected = reference.match(batch)
        assert compiled.match(batch) == expected
        MATCHES.append(len(expected))


@requires_a_match
@settings(max_examples=25, deadline=None)
@given(rules=st.lists(conditions, min_size=65, max_size=140),
       batches=st.lists(st.lists(records(), max_size=12), min_size=1, max_size=2))
def test_rule_sets_wider_than_a_word_match_the_same(rules, batches):
    """Candidates are kept as bits, 64 rules a word: past 64 rules, several words."""
    assert_same_matches(rules, batches)


def test_conjuncts_on_one_field_or_one_part_are_terms():
    program = engine.Program.compile({
        "exact": parse("evt.type = openat and (fd.name = /a or fd.name glob '/b*') and not proc.name in (sh)"),
        "one part": parse("evt.type = openat and (fd.name = /a or fd.directory = /etc) and (proc.name = sh or "
                          "proc.pname = sh)"),
        "mixed": parse("evt.type = openat and (fd.name = /a or proc.name = sh)"),
        "per record": parse("evt.type = openat and proc.duration > 5")})
    terms = sorted(program.fields[f] if f >= 0 else program.term_part[t] for t, f in enumerate(program.term_field))
    # evt.type = openat is one term, shared
    assert terms == ["evt", "evt.type", "fd.name", "proc", "proc.name"]
    assert program.exact.tolist() == [True, True, False, False]
    assert program.term_rules[0, 0] == 0b1111  # the shared term: a bit for each rule


def test_a_term_of_one_part_rules_out_per_key_and_per_record():
    """Rules whose conjuncts all read one part each match without running code: the
    rules their part terms rule out must be ruled out on both ways in."""
    rules = {"one part": parse("evt.type = openat and (fd.name = /a or fd.directory = /etc)")}
    compiled, reference = Engine(rules), Reference(rules)
    assert compiled.program.exact.tolist() == [True]
    batch = [{"kind": "event", "ts": 1, "evt": {"type": "openat", "fd": {"num": 3, "type": "file", "name": name}}}
             for name in ("/a", "/etc/x", "/tmp/a", "/etc", "/b/a")]
    assert compiled.match(batch) == reference.match(batch) == [(0, "one part"), (1, "one part")]


@requires_a_match
@settings(max_examples=100, deadline=None)
@given(rules=st.lists(conditions, min_size=1, max_size=3),
       batches=st.lists(st.lists(records(), min_size=1, max_size=10), min_size=2, max_size=4))
def test_tables_that_start_over_change_nothing(rules, batches):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "MAX_VALUES", 8)
        patch.setattr(engine, "MAX_PARTS", 2)
        patch.setattr(engine, "CEILING", 8)  # every batch starts over: the bounds do not grow
        assert_same_matches(rules, batches)


def test_a_bound_grows_only_when_its_table_fills_soon():
    now = [0.0]
    bound = engine.Bound(100, clock=lambda: now[0])
    assert not bound.exceeded(100)
    now[0] = engine.TURNOVER_S + 1  # short-lived containers' values: full after a while
    assert bound.exceeded(101) and bound.limit == 100
    now[0] += engine.TURNOVER_S / 2  # a working set larger than the table: full again soon
    assert not bound.exceeded(101) and bound.limit == 200
    while bound.limit < engine.CEILING:
        assert not bound.exceeded(bound.limit + 1)
    assert bound.exceeded(engine.CEILING + 1) and bound.limit == engine.CEILING


@pytest.mark.parametrize("condition, types", [
    ("evt.type = openat and fd.name = x", {"openat"}),
    ("evt.type in (open, openat) and (evt.type = openat or proc.name = sh)", {"open", "openat"}),
    ("evt.type = open or evt.type in (creat)", {"open", "creat"}),
    ("evt.type = open or proc.name = sh", None),
    ("not evt.type = open", None),
    ("evt.type != open", None),
])
def test_rules_are_indexed_by_the_types_their_conditions_allow(condition, types):
    assert event_types(parse(condition)) == (None if types is None else frozenset(types))


def test_a_record_is_tested_only_against_rules_of_its_type():
    rules = {"opens": parse("evt.type = openat and proc.name = cat"),
             "any": parse("proc.name = cat")}
    compiled = Engine(rules)
    batch = [{"evt": {"type": "openat"}, "proc": {"comm": "cat"}},
             {"evt": {"type": "execve"}, "proc": {"comm": "cat"}}]
    assert compiled.match(batch) == [(0, "opens"), (0, "any"), (1, "any")]
    # proc.name was read only where a rule of the record's type needed it: both records here
    assert len(compiled._values[compiled.program.fields.index("proc.name")].values) == 2


def test_more_matches_than_records_all_come_out():
    rules = {f"r{i}": parse("proc.name = cat") for i in range(50)}
    batch = [{"evt": {"type": "openat"}, "proc": {"comm": "cat"}}] * 3
    assert Engine(rules).match(batch) == [(i, f"r{r}") for i in range(3) for r in range(50)]


def test_part_rows_are_found_by_key_through_growth_and_collisions():
    """A part's open-addressing table: keys that share their low bits (the slot they
    start at) and more keys than the first table holds are all found, with what their
    values rule out; others are not."""
    part = engine._Part([0], words=1, coded={0})
    keys = np.concatenate([np.arange(1, 3000, dtype=np.uint64) << np.uint64(20),  # low 20 bits alike
                           np.arange(1, 6000, dtype=np.uint64)])
    for chunk in np.array_split(np.arange(len(keys)), 7):
        part.add(keys[chunk], chunk.astype(np.int32)[:, None], chunk.astype(np.uint64)[:, None] << np.uint64(1))

    def found(probe):
        at, ids, ruled_out = np.empty(len(probe), np.int64), np.zeros((len(probe), 1), np.int32), \
            np.zeros((len(probe), 1), np.uint64)
        part.gather(probe, np.ones(1, np.uint64), ids, ruled_out, at)
        return at, ids[:, 0], ruled_out[:, 0]

    at, ids, ruled_out = found(np.concatenate([keys, np.array([7 << 40, 123456789], np.uint64)]))
    assert at[-2:].tolist() == [-1, -1] and ids[-2:].tolist() == [0, 0] and ruled_out[-2:].tolist() == [0, 0]
    every = list(range(len(keys)))
    assert at[:-2].tolist() == every and ids[:-2].tolist() == every
    assert ruled_out[:-2].tolist() == [2 * k for k in every]
    part.clear()
    assert (found(keys)[0] == -1).all()

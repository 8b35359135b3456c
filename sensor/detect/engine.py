"""The rule engine: rule conditions compiled to jump code that a Numba function runs
over a batch of records.

A check (FIELD OP VALUE) depends on nothing but the value its field has. So each field
a rule uses is read once per record and interned: a record becomes a row of value
ids, one column per field. A check's result for each distinct value is computed once, with
the reference evaluator's own function (`evaluate.check_value`), and kept in a table
indexed by value id. What runs per record and rule is then the and/or/not structure:
table lookups with short-circuit jumps, in Numba.

And only for the rules left: a conjunct that reads one field (a term, see Program) is
true or false per value, so per value the engine keeps, as bits, the rules that value
rules out (and per evt.type value, the rules of other types); one that reads several
fields of one part of an event is true or false per part key. A record's candidates
are the rules none of its values rules out; those whose conjuncts are all terms match
without running their code. So 1000 rules cost about what 10 do.

Two ways in: `match(records)` reads fields from records (dicts), and `match_rows(rows)`
from a batch's syscall rows (sensor.detect.rows), where a field is read once per distinct
part of an event (its `evt`, `proc` or `container`, by the part's key), not once per
event, and so are the rules a part's values rule out. What each key seen gives is kept
from batch to batch.

Distinct values are kept up to a bound in all, and keys up to a bound per part; past
it, the tables start over, so a field with unbounded values (a pid, a path) costs time
to fill them again, not memory or correctness. A bound starts small (MAX_VALUES,
MAX_PARTS) and doubles, up to CEILING, when its table fills within TURNOVER_S: then
what the events keep using is more than it holds (see Bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from sensor.detect import evaluate, slots
from sensor.detect.condition import And, Check, Not, Or
from sensor.detect.condition import fields as fields_of
from sensor.records import Record
from sensor.detect.rows import PARTS, Rows

# Most values and keys are of one container (its paths, its processes) and are never
# seen again once it is gone: with thousands of short-lived containers a day, these
# bounds are what the engine's memory comes to (a few MiB), not a ceiling rarely met.
MAX_VALUES = 1 << 14  # in all, across fields, at first
MAX_PARTS = 1 << 14   # per part, at first
CEILING = 1 << 17     # what either bound may double to
TURNOVER_S = 10.0
TYPE_FIELD = "evt.type"

# Jump code: one (op, arg) row per instruction; the result is in an accumulator. (Numba
# reads these as compile-time constants.)
CHECK, JUMP_IF_FALSE, JUMP_IF_TRUE, NOT = 0, 1, 2, 3
DEFERRED = -1  # the value id of a field not read yet (read when a check needs it)


def event_types(node) -> frozenset[str] | None:
    """The evt.type values a condition can be true for; None when any can."""
    if isinstance(node, Check):
        if node.field == TYPE_FIELD and node.op in ("=", "in"):
            return frozenset(node.value) if isinstance(node.value, tuple) else frozenset((node.value,))
        return None
    if isinstance(node, And):
        known = [t for t in map(event_types, node.items) if t is not None]
        return frozenset.intersection(*known) if known else None
    if isinstance(node, Or):
        each = [event_types(item) for item in node.items]
        return None if any(t is None for t in each) else frozenset().union(*each)
    return None  # not: Falco too indexes only what a rule asks for


def rule_types(conditions) -> frozenset[str] | None:
    """The event types some of the conditions can be true for; None when any can."""
    types = [event_types(c) for c in conditions]
    return None if any(t is None for t in types) else frozenset().union(*types)


def conjuncts(node) -> list:
    """The items a condition is the `and` of (itself when it is not an `and`)."""
    if isinstance(node, And):
        return [c for item in node.items for c in conjuncts(item)]
    return [node]


def _words(rules: int) -> int:
    """64-bit words for a bit per rule."""
    return max(1, -(-rules // 64))


def _bits(rules, words: int) -> np.ndarray:
    """The rules (indices) as a bit each in `words` 64-bit words."""
    out = np.zeros(words, np.uint64)
    for r in rules:
        out[r // 64] |= np.uint64(1 << (r % 64))
    return out


@dataclass
class Program:
    """A rule set compiled: rule r's code is code[rule_code[r]:rule_code[r + 1]].

    A conjunct of a rule that reads one field only (a term: `fd.name startswith /etc`,
    `not proc.name in (...)`, `(fd.name = a or fd.name glob b)`) is true or false for
    each of that field's values, whatever else the event holds. So per field value the
    engine keeps the rules that one of their terms rules out (a bit per rule), and an
    event's candidates are the rules of its type that none of its values rules out: a
    few word operations, however many rules there are. A conjunct that reads several
    fields of one part of an event (`fd.name in (...) or fd.directory = /etc/ssh`) is
    a term too, of that part: it is true or false per part key (Engine.match_rows),
    and per record. A candidate whose conjuncts are all terms matches; the others run
    their code. Term t's code is code[term_code[t]:term_code[t + 1]]."""
    names: list[str]
    fields: list[str]               # field names as conditions write them; TYPE_FIELD first
    checks: list[Check]             # distinct checks
    check_field: np.ndarray         # int32, per check: its field's row
    code: np.ndarray                # int32 [n, 2]
    rule_code: np.ndarray           # int32 [rules + 1]
    types: list[frozenset[str] | None]
    rule_fields: list[frozenset[int]]
    term_field: np.ndarray          # int32, per term: the field it reads (-1: several)
    term_part: list[str]            # per term: the part (sensor.detect.rows) its fields are of
    term_code: np.ndarray           # int32 [terms + 1]
    term_rules: np.ndarray          # uint64 [terms, words]: the rules that have the term
    exact: np.ndarray               # bool, per rule: all its conjuncts are terms

    @property
    def words(self) -> int:
        return _words(len(self.names))

    @classmethod
    def compile(cls, conditions: dict[str, object]) -> Program:
        fields, checks, code, starts, rule_fields = [TYPE_FIELD], {}, [], [], []

        def emit(node, used: set[int]) -> None:
            if isinstance(node, (And, Or)):
                jumps = []
                for position, item in enumerate(node.items):
                    emit(item, used)
                    if position < len(node.items) - 1:
                        jumps.append(len(code))
                        code.append([JUMP_IF_FALSE if isinstance(node, And) else JUMP_IF_TRUE, -1])
                for at in jumps:
                    code[at][1] = len(code)
            elif isinstance(node, Not):
                emit(node.item, used)
                code.append([NOT, 0])
            else:
                evaluate.field_of(node.field)  # an unknown field fails here, not per record
                if node.field not in fields:
                    fields.append(node.field)
                used.add(fields.index(node.field))
                code.append([CHECK, checks.setdefault(node, len(checks))])

        for condition in conditions.values():
            starts.append(len(code))
            used: set[int] = set()
            emit(condition, used)
            rule_fields.append(frozenset(used))
        starts.append(len(code))
        terms: dict[tuple, list[int]] = {}  # (part, its field or None: several, conjunct) -> its rules
        exact = []
        for r, condition in enumerate(conditions.values()):
            exact.append(True)
            for item in conjuncts(condition):
                names = sorted(fields_of(item))
                (part, *more) = {evaluate.field_of(name)[0].part for name in names}
                # Fields read per record are not read before the rules run: not in terms.
                if more or part == "record":
                    exact[r] = False
                else:
                    terms.setdefault((part, names[0] if len(names) == 1 else None, item), []).append(r)
        term_code = []
        for _, _, item in terms:
            term_code.append(len(code))
            emit(item, set())
        term_code.append(len(code))
        words = _words(len(conditions))
        ordered = sorted(checks, key=checks.get)
        return cls(names=list(conditions), fields=fields, checks=ordered,
                   check_field=np.array([fields.index(c.field) for c in ordered], np.int32),
                   code=np.array(code, np.int32).reshape(-1, 2), rule_code=np.array(starts, np.int32),
                   types=[event_types(c) for c in conditions.values()], rule_fields=rule_fields,
                   term_field=np.array([-1 if field is None else fields.index(field) for _, field, _ in terms],
                                       np.int32),
                   term_part=[part for part, _, _ in terms],
                   term_code=np.array(term_code, np.int32),
                   term_rules=np.array([_bits(rules, words) for rules in terms.values()], np.uint64).reshape(-1, words),
                   exact=np.array(exact, np.bool_))


class _Values:
    """One field's distinct values and their ids; id 0 is None (the field is missing)."""

    def __init__(self):
        self.ids: dict = {None: 0}
        self.values: list = [None]

    def intern(self, value) -> int:
        found = self.ids.get(value)
        if found is None:
            found = self.ids[value] = len(self.values)
            self.values.append(value)
        return found


class Bound:
    """A table's size bound. A table that fills within TURNOVER_S of its last start-over
    (or of its bound's last growth) holds less than the events keep using: its bound
    doubles, up to CEILING, and it keeps what it has. One that fills more slowly starts
    over: most of what it holds is of containers and processes long gone."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self.since = clock()

    def exceeded(self, size: int) -> bool:
        """Whether a table of `size` must start over now."""
        if size <= self.limit:
            return False
        now = self.clock()
        soon, self.since = now - self.since < TURNOVER_S, now
        if soon and self.limit < CEILING:
            self.limit = min(2 * self.limit, CEILING)
            return False
        return True


class _Part:
    """The value ids of one part's fields for each key seen, table[row], found with the
    rules those values rule out in a hash table (sensor.detect.slots): key -> row, with the
    rules' bits as extra columns, so a key's slot says what an event needs of it."""

    def __init__(self, fields: list[int], words: int, coded: set[int]):
        self.fields = np.array(fields, np.int64)
        # The fields that rules' code reads (those of rules not all terms), by column:
        # the only ones an event's row of ids needs.
        self.coded_columns = np.array([c for c, f in enumerate(fields) if f in coded], np.int64)
        self.coded_fields = self.fields[self.coded_columns]
        self.size = 0
        self.bound = Bound(MAX_PARTS)
        self.table = np.zeros((1024, len(fields)), np.int32)
        self.slots = slots.new(2048, words)

    def clear(self) -> None:
        if self.size:
            self.slots[:] = 0
            self.size = 0

    def add(self, keys: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
        """Rows for new keys, with their fields' value ids and the rules these rule out
        (ids[k] and out[k] for keys[k])."""
        start = self.size
        end = self.size = start + len(keys)
        if end > self.table.shape[0]:
            self.table = _grown(self.table, 0, end)
        self.table[start:end] = ids
        self.slots = slots.with_room(self.slots, end)
        slots.insert(self.slots, keys, np.arange(start, end, dtype=np.int64), out)

    def gather(self, keys: np.ndarray, coded_rules: np.ndarray, ids: np.ndarray, ruled_out: np.ndarray,
               at: np.ndarray) -> int:
        """_gather over this part's table: how many keys were not seen."""
        return _gather(keys, self.slots, self.table, self.coded_columns, self.coded_fields, coded_rules, ids,
                       ruled_out, at)


class Engine:
    """Matches batches of `event` records against compiled rules. Not thread-safe: one
    engine per polling thread."""

    def __init__(self, conditions: dict[str, object]):
        self.program = p = Program.compile(conditions)
        self._getters = [evaluate.field_of(name) for name in p.fields]
        self._values = [_Values() for _ in p.fields]
        self._values_bound = Bound(MAX_VALUES)
        self._done = [0] * len(p.fields)  # per field: value ids whose checks are in the tables
        self._checks_of = [np.flatnonzero(p.check_field == f) for f in range(len(p.fields))]
        self._table = np.zeros((len(p.checks), 1024), np.uint8)
        self._terms_of = [np.flatnonzero(p.term_field == f).astype(np.int32) for f in range(len(p.fields))]
        # Terms of several fields of one part: ruled on per part key (all of them per record).
        several = np.flatnonzero(p.term_field < 0).tolist()
        self._part_terms = {part: np.array([t for t in several if p.term_part[t] == part], np.int32) for part in PARTS}
        self._part_terms[None] = np.array(several, np.int32)
        # Per value of a field with terms: the rules it rules out, at row fail_base[f] + value id.
        self._fail_base = np.zeros(len(p.fields), np.int64)
        self._fail_rows = np.zeros(len(p.fields), np.int64)  # rows each field has
        self._fails = np.zeros((0, p.words), np.uint64)
        part_of = [getter[0].part for getter in self._getters]
        coded = set().union(*(p.rule_fields[r] for r in range(len(p.names)) if not p.exact[r]))
        self._coded_rules = _bits(np.flatnonzero(~p.exact).tolist(), p.words)  # the rules that run their code
        self._parts = {part: _Part([f for f in range(len(p.fields)) if part_of[f] == part], p.words, coded)
                       for part in PARTS}
        self._per_record = [f for f in range(len(p.fields)) if part_of[f] == "record"]
        self._index_types = 0  # type ids the index covers
        self._type_rules = np.zeros((1, p.words), np.uint64)  # per type id: the rules of that type
        self._rule_mask = _bits(range(len(p.names)), p.words)
        # Compiled (or loaded from Numba's cache) now: at the first batch it would stall
        # a sensor that has short-lived containers to name.
        self._run(np.zeros((0, 1), np.int32), np.zeros((0, p.words), np.uint64), np.zeros(0, np.int64),
                  np.zeros(0, np.bool_))
        self._ruled_out(np.zeros((0, 1), np.int32), [0], None)
        _failing(np.zeros((0, 1), np.int32), np.zeros(0, np.int32), p.code, p.term_code, p.term_rules, p.check_field,
                 self._table, np.zeros((0, p.words), np.uint64))
        _fill_fails(self._fails, 0, 0, 0, np.zeros(0, np.int32), p.code, p.term_code, p.term_rules, p.check_field,
                    self._table)
        evt, none = self._parts["evt"], np.zeros(0, np.uint64)
        evt.gather(none, self._coded_rules, np.zeros((0, len(p.fields)), np.int32), np.zeros((0, p.words), np.uint64),
                   np.zeros(0, np.int64))
        slots.insert(evt.slots, none, np.zeros(0, np.int64), np.zeros((0, p.words), np.uint64))

    def match(self, records: Sequence[dict]) -> list[tuple[int, str]]:
        """(record index, rule name) of every match, in record order, then rule order."""
        p = self.program
        if not p.names or not records:
            return []
        self._start_over_if_full()
        ids = np.zeros((len(records), len(p.fields)), np.int32)
        types, (type_field, type_index) = self._values[0], self._getters[0]
        for i, record in enumerate(records):
            ids[i, 0] = types.intern(type_field.get(record, type_index))
        self._extend_index()
        for f in range(1, len(p.fields)):
            self._read_field(f, ids, records.__getitem__)
        self._fill_tables()
        ruled_out = self._ruled_out(ids, range(len(p.fields)), None)
        return [(i, p.names[r]) for i, r in self._evaluate(ids, ruled_out).tolist()]

    def match_rows(self, batch: Sequence[Rows]) -> np.ndarray:
        """(array, row, rule index in program.names) of every match of a batch's syscall
        arrays, in array and row order, then rule order: int64 [matches, 3]."""
        p = self.program
        if not p.names or not batch:
            return np.zeros((0, 3), np.int64)
        self._start_over_if_full()
        # The arrays' rows run as one: row i of the whole is row i - starts[a] of array a.
        ends = np.cumsum([rows.n for rows in batch])
        starts = ends - [rows.n for rows in batch]

        def record(i: int) -> Record:
            a = int(np.searchsorted(ends, i, side="right"))
            return batch[a].record(i - int(starts[a]))

        ids = np.zeros((int(ends[-1]), len(p.fields)), np.int32)
        ruled_out = np.zeros((len(ids), p.words), np.uint64)
        for part in PARTS:  # evt first: evt.type is one of its fields
            self._read_part(part, np.concatenate([rows.keys[part] for rows in batch]), record, ids, ruled_out)
        if self._per_record:
            ids[:, self._per_record] = DEFERRED
        matches = self._evaluate(ids, ruled_out, record)
        which = np.searchsorted(ends, matches[:, 0], side="right")
        return np.column_stack((which, matches[:, 0] - starts[which], matches[:, 1]))

    def _read_field(self, f: int, ids: np.ndarray, record, among: np.ndarray | None = None) -> None:
        """Field f of the records (of those `among`) whose type has rules that read it."""
        (field, index), values, row = self._getters[f], self._values[f], ids[:, f]
        rows = np.flatnonzero(self._reads[f][ids[:, 0]]) if among is None else among
        for i in rows.tolist():
            row[i] = values.intern(field.get(record(i), index))

    def _read_part(self, part: str, keys: np.ndarray, record, ids: np.ndarray, ruled_out: np.ndarray) -> None:
        """A part's fields for every row (its key in keys), and the rules they rule out:
        looked up by key, read for keys not seen yet from one row that has it (record(i))."""
        known = self._parts[part]
        if not len(known.fields):
            return
        at = np.empty(len(keys), np.int64)
        if known.gather(keys, self._coded_rules, ids, ruled_out, at):
            missing = np.flatnonzero(at < 0)
            new, first = np.unique(keys[missing], return_index=True)
            getters = [self._getters[f] for f in known.fields]
            values = [self._values[f] for f in known.fields]
            read = np.empty((len(new), len(known.fields)), np.int32)
            for k, i in enumerate(missing[first].tolist()):
                event = record(i)
                read[k] = [v.intern(field.get(event, index)) for (field, index), v in zip(getters, values)]
            self._fill_tables()
            self._extend_index()
            known.add(new, read, self._ruled_out(read, known.fields, part))
            known.gather(keys, self._coded_rules, ids, ruled_out, at)

    def _ruled_out(self, ids: np.ndarray, fields, part: str | None) -> np.ndarray:
        """Per row of ids (whose columns are `fields`, those of `part`; None: all): the
        rules its values rule out, by their terms or, for evt.type, by the type index,
        and the rules that the terms of several of those fields rule out."""
        fields = np.asarray(fields, np.int64)
        out = _ruled_out(ids, fields, self._fails, self._fail_base, self._fail_rows, self._type_rules)
        terms = self._part_terms[part]
        if len(terms) and len(ids):
            p = self.program
            full = np.zeros((len(ids), len(p.fields)), np.int32)
            full[:, fields] = ids
            _failing(full, terms, p.code, p.term_code, p.term_rules, p.check_field, self._table, out)
        return out

    def _evaluate(self, ids: np.ndarray, ruled_out: np.ndarray, record=None) -> np.ndarray:
        """Run the rules that ruled_out leaves over ids: (record, rule) int64 [matches,
        2]. Fields left DEFERRED are read (from `record(i)`) only for the rows whose
        evaluation reaches a check on one, and those rows run again."""
        deferred = np.zeros(ids.shape[0], np.bool_)
        found = self._run(ids, ruled_out, np.arange(ids.shape[0]), deferred)
        again = np.flatnonzero(deferred)
        if len(again):
            for f in self._per_record:
                self._read_field(f, ids, record, again)
            self._fill_tables()
            found = np.concatenate((found, self._run(ids, ruled_out, again, np.zeros_like(deferred))))
            found = found[np.argsort(found[:, 0], kind="stable")]  # a record's rules stay in order
        return found

    def _run(self, ids: np.ndarray, ruled_out: np.ndarray, order: np.ndarray, deferred: np.ndarray) -> np.ndarray:
        p = self.program
        found, start = [], 0
        while not found or start < len(order):
            out = np.empty((len(order) - start + len(p.names), 2), np.int64)
            count, start = _run(ids, ruled_out, self._rule_mask, p.check_field, self._table, p.code, p.rule_code,
                                p.exact, order, start, out, deferred)
            found.append(out[:count])
        return found[0] if len(found) == 1 else np.concatenate(found)

    def _start_over_if_full(self) -> None:
        if self._values_bound.exceeded(sum(len(values.values) for values in self._values)):
            self._values = [_Values() for _ in self._values]
            self._done = [0] * len(self._values)
            self._index_types = 0
            for part in self._parts.values():
                part.clear()  # their rows hold ids of the old values
        for part in self._parts.values():
            if part.bound.exceeded(part.size):
                part.clear()

    def _extend_index(self) -> None:
        """Rules by type id, for the type ids interned so far (rebuilt when one is new)."""
        values = self._values[0].values
        if self._index_types == len(values):
            return
        p = self.program
        per_type = [[r for r, allowed in enumerate(p.types) if allowed is None or value in allowed] for value in values]
        self._type_rules = np.array([_bits(rules, p.words) for rules in per_type], np.uint64)
        # reads[f][type id]: whether some rule of that type reads field f
        reads = np.zeros((len(p.fields), len(values)), bool)
        for t, rules in enumerate(per_type):
            for r in rules:
                reads[list(p.rule_fields[r]), t] = True
        self._reads = reads
        self._index_types = len(values)

    def _fill_tables(self) -> None:
        """Each check's result, and each field's ruled-out rules, for the values the
        fields got since the last batch."""
        need = max(len(v.values) for v in self._values)
        if need > self._table.shape[1]:
            self._table = _grown(self._table, 1, need)
        self._make_room_for_fails()
        for f, values in enumerate(self._values):
            done = self._done[f]
            if done == len(values.values):
                continue
            field = self._getters[f][0]
            for c in self._checks_of[f]:
                check = self.program.checks[c]
                self._table[c, done:len(values.values)] = [
                    evaluate.check_value(check, field, v) for v in values.values[done:]]
            p = self.program
            _fill_fails(self._fails, self._fail_base[f], done, len(values.values), self._terms_of[f], p.code,
                        p.term_code, p.term_rules, p.check_field, self._table)
            self._done[f] = len(values.values)

    def _make_room_for_fails(self) -> None:
        """Rows for every value of the fields with terms (a field's rows double when it
        outgrows them; its rows start over with its values)."""
        rows = np.array([max(1024, _power_of_two(len(v.values))) if len(self._terms_of[f]) else 0
                         for f, v in enumerate(self._values)], np.int64)
        if np.all(rows <= self._fail_rows):
            return
        rows = np.maximum(rows, self._fail_rows)
        base = np.concatenate(([0], np.cumsum(rows)[:-1])).astype(np.int64)
        fails = np.zeros((int(rows.sum()), self.program.words), np.uint64)
        for f, had in enumerate(self._fail_rows.tolist()):
            fails[base[f]:base[f] + had] = self._fails[self._fail_base[f]:self._fail_base[f] + had]
        self._fails, self._fail_base, self._fail_rows = fails, base, rows


def _power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _grown(table: np.ndarray, axis: int, need: int) -> np.ndarray:
    """The table with its `axis` doubled until it holds `need`, the rest zeros."""
    size = table.shape[axis]
    while size < need:
        size *= 2
    shape = list(table.shape)
    shape[axis] = size
    grown = np.zeros(shape, table.dtype)
    grown[tuple(slice(0, s) for s in table.shape)] = table
    return grown


@numba.njit(cache=True, nogil=True, inline="always")
def _interpret(code, pc, end, check_field, table, ids, i):
    """One rule's (or term's) code for row i of ids: 1 true, 0 false, -1 when it reaches
    a check on a DEFERRED field."""
    acc = False
    while pc < end:
        op, arg = code[pc, 0], code[pc, 1]
        if op == CHECK:
            value = ids[i, check_field[arg]]
            if value == DEFERRED:
                return -1
            acc = table[arg, value] != 0
            pc += 1
        elif op == JUMP_IF_FALSE:
            pc = pc + 1 if acc else arg
        elif op == JUMP_IF_TRUE:
            pc = arg if acc else pc + 1
        else:  # NOT
            acc = not acc
            pc += 1
    return 1 if acc else 0


@numba.njit(cache=True, nogil=True)
def _fill_fails(fails, base, first, last, terms, code, term_code, term_rules, check_field, table):
    """Rows base + first .. base + last of `fails`: per value id, the rules that one of
    the field's terms rules out."""
    if last <= first or terms.shape[0] == 0:
        return
    f = check_field[code[term_code[terms[0]], 1]]  # a term's first instruction is a check
    ids = np.zeros((last - first, f + 1), np.int32)
    for k in range(last - first):
        ids[k, f] = first + k
    fails[base + first:base + last] = 0
    _failing(ids, terms, code, term_code, term_rules, check_field, table, fails[base + first:base + last])


@numba.njit(cache=True, nogil=True)
def _failing(ids, terms, code, term_code, term_rules, check_field, table, out):
    """Into out[i], the rules that one of `terms` rules out for row i of ids."""
    for t in terms:
        for i in range(ids.shape[0]):
            if _interpret(code, term_code[t], term_code[t + 1], check_field, table, ids, i) == 0:
                for w in range(out.shape[1]):
                    out[i, w] |= term_rules[t, w]


@numba.njit(cache=True, nogil=True)
def _ruled_out(ids, fields, fails, fail_base, fail_rows, type_rules):
    out = np.zeros((ids.shape[0], fails.shape[1]), np.uint64)
    for i in range(ids.shape[0]):
        for c in range(fields.shape[0]):
            f = fields[c]
            if fail_rows[f]:
                for w in range(out.shape[1]):
                    out[i, w] |= fails[fail_base[f] + ids[i, c], w]
            if f == 0:  # evt.type
                for w in range(out.shape[1]):
                    out[i, w] |= ~type_rules[ids[i, c], w]
    return out


@numba.njit(cache=True, nogil=True)
def _run(ids, ruled_out, rule_mask, check_field, table, code, rule_code, exact, order, start, out, deferred):
    """Evaluate the records order[start:] into `out` (record, rule) until done or `out`
    has no room for another record's matches; returns (matches written, next position).
    Only the rules ruled_out leaves run. A record that reaches a check on a DEFERRED
    field is marked in `deferred`, and its matches are dropped: it runs again once the
    field is read."""
    count = 0
    room = out.shape[0] - (rule_code.shape[0] - 1)  # a record may match every rule
    for k in range(start, order.shape[0]):
        if count > room:
            return count, k
        i = order[k]
        first = count
        for w in range(rule_mask.shape[0]):
            bits, r = ~ruled_out[i, w] & rule_mask[w], w * 64
            while bits and not deferred[i]:
                if bits & np.uint64(1):
                    got = 1 if exact[r] else _interpret(code, rule_code[r], rule_code[r + 1], check_field, table,
                                                        ids, i)
                    if got < 0:
                        deferred[i] = True
                        count = first
                    elif got:
                        out[count, 0] = i
                        out[count, 1] = r
                        count += 1
                bits >>= np.uint64(1)
                r += 1
    return count, order.shape[0]


@numba.njit(cache=True, nogil=True)
def _gather(keys, keyed, table, columns, fields, coded_rules, ids, ruled_out, at):
    """Each key's row in `keyed` (at; -1 when not seen), and for those seen, the rules
    their values rule out into ruled_out and, unless those include every rule that runs
    its code (coded_rules), the value ids in their table columns `columns` into ids'
    columns `fields`. Returns how many were not seen."""
    missing = 0
    for i in range(keys.shape[0]):
        s = slots.find(keyed, keys[i])
        row = slots.value(keyed, s)
        at[i] = row
        if row < 0:
            missing += 1
            continue
        coded = np.uint64(0)
        for w in range(ruled_out.shape[1]):
            out = keyed[s, 2 + w]
            ruled_out[i, w] |= out
            coded |= ~out & coded_rules[w]
        if coded:
            for c in range(fields.shape[0]):
                ids[i, fields[c]] = table[row, columns[c]]
    return missing

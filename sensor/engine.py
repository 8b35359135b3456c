"""The rule engine: rule conditions compiled to jump code that a Numba function runs
over a batch of records.

A check (FIELD OP VALUE) depends on nothing but the value its field has. So each field
a rule uses is read once per record and interned: a record becomes a row of value
ids, one column per field. A check's result for each distinct value is computed once, with
the reference evaluator's own function (`evaluate.check_value`), and kept in a table
indexed by value id. What runs per record and rule is then the and/or/not structure:
table lookups with short-circuit jumps, in Numba, and only for the rules that can
match the record's `evt.type` (rules are indexed by the types their conditions allow).

Two ways in: `match(records)` reads fields from records (dicts), and `match_rows(rows)`
from a batch's syscall rows (sensor.rows), where a field is read once per distinct
part of an event (its `evt`, `proc` or `container`, by the part's key), not once per
event. The value ids of each `evt` and `proc` key seen are kept from batch to batch;
those of `container` keys for one batch.

Distinct values are kept per field up to MAX_VALUES, and keys per part up to MAX_PARTS;
past that, the table starts over, so a field with unbounded values (a pid, a port)
costs memory, not correctness.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from sensor import evaluate
from sensor.condition import And, Check, Not, Or
from sensor.rows import PARTS, Rows

MAX_VALUES = 1 << 16
MAX_PARTS = 1 << 17
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


@dataclass
class Program:
    """A rule set compiled: rule r's code is code[rule_code[r]:rule_code[r + 1]]."""
    names: list[str]
    fields: list[str]               # field names as conditions write them; TYPE_FIELD first
    checks: list[Check]             # distinct checks
    check_field: np.ndarray         # int32, per check: its field's row
    code: np.ndarray                # int32 [n, 2]
    rule_code: np.ndarray           # int32 [rules + 1]
    types: list[frozenset[str] | None]
    rule_fields: list[frozenset[int]]

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
        ordered = sorted(checks, key=checks.get)
        return cls(names=list(conditions), fields=fields, checks=ordered,
                   check_field=np.array([fields.index(c.field) for c in ordered], np.int32),
                   code=np.array(code, np.int32).reshape(-1, 2), rule_code=np.array(starts, np.int32),
                   types=[event_types(c) for c in conditions.values()], rule_fields=rule_fields)


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


class _Part:
    """The value ids of one part's fields for each key seen: table[rows[key]]."""

    def __init__(self, fields: list[int]):
        self.fields = fields
        # Used from compiled code only: from Python, each operation on a typed dict is
        # compiled when first used, which would stall the first batch.
        self.rows = numba.typed.Dict.empty(numba.types.uint64, numba.types.int64)
        self.size = 0
        self.table = np.zeros((1024, len(fields)), np.int32)

    def clear(self) -> None:
        if self.size:
            self.rows = numba.typed.Dict.empty(numba.types.uint64, numba.types.int64)
            self.size = 0

    def add(self, keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Rows for new keys, with their fields' value ids (ids[k] for keys[k])."""
        start = self.size
        end = self.size = start + len(keys)
        if end > self.table.shape[0]:
            grown = np.zeros((max(2 * self.table.shape[0], end), len(self.fields)), np.int32)
            grown[:start] = self.table[:start]
            self.table = grown
        self.table[start:end] = ids
        rows = np.arange(start, end, dtype=np.int64)
        _insert(self.rows, keys, rows)
        return rows


class Engine:
    """Matches batches of `event` records against compiled rules. Not thread-safe: one
    engine per polling thread."""

    def __init__(self, conditions: dict[str, object]):
        self.program = p = Program.compile(conditions)
        self._getters = [evaluate.field_of(name) for name in p.fields]
        self._values = [_Values() for _ in p.fields]
        self._done = [0] * len(p.fields)  # per field: value ids whose checks are in the table
        self._checks_of = [np.flatnonzero(p.check_field == f) for f in range(len(p.fields))]
        self._table = np.zeros((len(p.checks), 1024), np.uint8)
        part_of = [getter[0].part for getter in self._getters]
        self._parts = {part: _Part([f for f in range(len(p.fields)) if part_of[f] == part]) for part in PARTS}
        self._per_record = [f for f in range(len(p.fields)) if part_of[f] == "record"]
        self._index_types = 0  # type ids the index covers
        self._index_start = np.zeros(1, np.int32)
        self._index_rules = np.zeros(0, np.int32)
        self.seconds = {"read": 0.0, "evaluate": 0.0}  # where match() spends its time, in total
        # Compiled (or loaded from Numba's cache) now: at the first batch it would stall
        # a sensor that has short-lived containers to name.
        self._run(np.zeros((0, 1), np.int32), np.zeros(0, np.int64), np.zeros(0, np.bool_))
        _known(np.zeros(0, np.uint64), self._parts["evt"].rows, np.zeros(0, np.int64))
        _insert(self._parts["evt"].rows, np.zeros(0, np.uint64), np.zeros(0, np.int64))

    def match(self, records: Sequence[dict]) -> list[tuple[int, str]]:
        """(record index, rule name) of every match, in record order, then rule order."""
        p = self.program
        if not p.names or not records:
            return []
        started = time.perf_counter()
        self._start_over_if_full()
        ids = np.zeros((len(records), len(p.fields)), np.int32)
        types, (type_field, type_index) = self._values[0], self._getters[0]
        for i, record in enumerate(records):
            ids[i, 0] = types.intern(type_field.get(record, type_index))
        self._extend_index()
        for f in range(1, len(p.fields)):
            self._read_field(f, ids, records.__getitem__)
        return self._evaluate(ids, started)

    def match_rows(self, batch: Sequence[Rows]) -> list[tuple[int, int, str]]:
        """(array, row, rule name) of every match of a batch's syscall arrays, in array
        and row order, then rule order."""
        p = self.program
        found: list[tuple[int, int, str]] = []
        if not p.names:
            return found
        self._parts["container"].clear()  # a container's identity is filled in in place
        for a, rows in enumerate(batch):
            started = time.perf_counter()
            self._start_over_if_full()
            ids = np.zeros((rows.n, len(p.fields)), np.int32)
            self._read_part("evt", rows, ids)  # evt.type among them
            self._extend_index()
            for part in ("proc", "container"):
                self._read_part(part, rows, ids)
            ids[:, self._per_record] = DEFERRED
            found += [(a, i, name) for i, name in self._evaluate(ids, started, rows.record)]
        return found

    def _read_field(self, f: int, ids: np.ndarray, record, among: np.ndarray | None = None) -> None:
        """Field f of the records (of those `among`) whose type has rules that read it."""
        (field, index), values, row = self._getters[f], self._values[f], ids[:, f]
        rows = np.flatnonzero(self._reads[f][ids[:, 0]]) if among is None else among
        for i in rows.tolist():
            row[i] = values.intern(field.get(record(i), index))

    def _read_part(self, part: str, rows: Rows, ids: np.ndarray) -> None:
        """A part's fields for every row: looked up by key, read for keys not seen yet
        from one row that has it."""
        known = self._parts[part]
        if not known.fields:
            return
        keys = rows.keys[part]
        at = np.empty(rows.n, np.int64)
        if _known(keys, known.rows, at):
            missing = np.flatnonzero(at < 0)
            new, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
            getters = [self._getters[f] for f in known.fields]
            values = [self._values[f] for f in known.fields]
            read = np.empty((len(new), len(known.fields)), np.int32)
            for k, i in enumerate(missing[first].tolist()):
                record = rows.record(i)
                read[k] = [v.intern(field.get(record, index)) for (field, index), v in zip(getters, values)]
            at[missing] = known.add(new, read)[inverse]
        ids[:, known.fields] = known.table[at]

    def _evaluate(self, ids: np.ndarray, started: float, record=None) -> list[tuple[int, str]]:
        """Run the rules over ids. Fields left DEFERRED are read (from `record(i)`) only
        for the rows whose evaluation reaches a check on one, and those rows run again."""
        self._fill_table()
        read = time.perf_counter()
        deferred = np.zeros(ids.shape[0], np.bool_)
        found = self._run(ids, np.arange(ids.shape[0]), deferred)
        again = np.flatnonzero(deferred)
        if len(again):
            evaluating = time.perf_counter()
            for f in self._per_record:
                self._read_field(f, ids, record, again)
            self._fill_table()
            read += time.perf_counter() - evaluating
            found = sorted(found + self._run(ids, again, np.zeros_like(deferred)), key=lambda match: match[0])
        self.seconds["read"] += read - started
        self.seconds["evaluate"] += time.perf_counter() - read
        return [(i, self.program.names[r]) for i, r in found]

    def _run(self, ids: np.ndarray, order: np.ndarray, deferred: np.ndarray) -> list[tuple[int, int]]:
        p = self.program
        out = np.empty((len(order) + len(p.names), 2), np.int32)
        found, start = [], 0
        while start < len(order):
            count, start = _run(ids, p.check_field, self._table, p.code, p.rule_code, self._index_start,
                                self._index_rules, order, start, out, deferred)
            found.extend(map(tuple, out[:count].tolist()))
        return found

    def _start_over_if_full(self) -> None:
        for f, values in enumerate(self._values):
            if len(values.values) > MAX_VALUES:
                self._values[f] = _Values()
                self._done[f] = 0
                for part in self._parts.values():
                    part.clear()  # their rows hold ids of the old values
                if f == 0:
                    self._index_types = 0
        for part in self._parts.values():
            if part.size > MAX_PARTS:
                part.clear()

    def _extend_index(self) -> None:
        """Rules by type id, for the type ids interned so far (rebuilt when one is new)."""
        values = self._values[0].values
        if self._index_types == len(values):
            return
        p = self.program
        per_type = [[r for r, allowed in enumerate(p.types) if allowed is None or value in allowed]
                    for value in values]
        self._index_start = np.cumsum([0] + [len(rules) for rules in per_type], dtype=np.int32)
        self._index_rules = np.array([r for rules in per_type for r in rules], np.int32)
        # reads[f][type id]: whether some rule of that type reads field f
        reads = np.zeros((len(p.fields), len(values)), bool)
        for t, rules in enumerate(per_type):
            for r in rules:
                reads[list(p.rule_fields[r]), t] = True
        self._reads = reads
        self._index_types = len(values)

    def _fill_table(self) -> None:
        """Each check's result for the values its field got since the last batch."""
        need = max(len(v.values) for v in self._values)
        if need > self._table.shape[1]:
            size = self._table.shape[1]
            while size < need:
                size *= 2
            grown = np.zeros((self._table.shape[0], size), np.uint8)
            grown[:, :self._table.shape[1]] = self._table
            self._table = grown
        for f, values in enumerate(self._values):
            done = self._done[f]
            if done == len(values.values):
                continue
            field = self._getters[f][0]
            for c in self._checks_of[f]:
                check = self.program.checks[c]
                self._table[c, done:len(values.values)] = [
                    evaluate.check_value(check, field, v) for v in values.values[done:]]
            self._done[f] = len(values.values)


@numba.njit(cache=True, nogil=True)
def _run(ids, check_field, table, code, rule_code, index_start, index_rules, order, start, out, deferred):
    """Evaluate the records order[start:] into `out` (record, rule) until done or `out`
    has no room for another record's matches; returns (matches written, next position).
    A record that reaches a check on a DEFERRED field is marked in `deferred`, and its
    matches are dropped: it runs again once the field is read."""
    count = 0
    room = out.shape[0] - (rule_code.shape[0] - 1)  # a record may match every rule
    for k in range(start, order.shape[0]):
        if count > room:
            return count, k
        i = order[k]
        first = count
        t = ids[i, 0]
        for j in range(index_start[t], index_start[t + 1]):
            r = index_rules[j]
            pc, end, acc = rule_code[r], rule_code[r + 1], False
            while pc < end:
                op, arg = code[pc, 0], code[pc, 1]
                if op == CHECK:
                    value = ids[i, check_field[arg]]
                    if value == DEFERRED:
                        deferred[i] = True
                        break
                    acc = table[arg, value] != 0
                    pc += 1
                elif op == JUMP_IF_FALSE:
                    pc = pc + 1 if acc else arg
                elif op == JUMP_IF_TRUE:
                    pc = arg if acc else pc + 1
                else:  # NOT
                    acc = not acc
                    pc += 1
            if deferred[i]:
                count = first
                break
            if acc:
                out[count, 0] = i
                out[count, 1] = r
                count += 1
    return count, order.shape[0]


@numba.njit(cache=True, nogil=True)
def _known(keys, rows, at):
    """The row of each key (-1 when not seen); returns how many were not."""
    missing = 0
    for i in range(keys.shape[0]):
        at[i] = rows.get(keys[i], -1)
        if at[i] < 0:
            missing += 1
    return missing


@numba.njit(cache=True, nogil=True)
def _insert(rows, keys, values):
    for i in range(keys.shape[0]):
        rows[keys[i]] = values[i]

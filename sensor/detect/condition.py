"""Falco's condition language: parsing to an AST, and expanding macros and lists.

    condition := or
    or        := and ("or" and)*
    and       := not ("and" not)*
    not       := "not" not | "(" or ")" | check
    check     := FIELD "exists" | FIELD OP VALUE | FIELD ("in" | "intersects" | "pmatch") LIST | MACRO
    LIST      := "(" [VALUE ("," VALUE)*] ")"     (a VALUE that names a list is replaced by its items)
    VALUE     := 'quoted' | "quoted" (a backslash escapes the next character)
               | a bare word (no blanks, parentheses, commas or quotes)

A FIELD has a dot (proc.name, evt.arg.flags, proc.aname[2]); a MACRO is a bare name.
Errors carry the offset in the condition text, so callers can point at file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMPARISONS = ("<=", ">=", "!=", "==", "=", "<", ">")
WORD_OPERATORS = ("contains", "icontains", "bcontains", "startswith", "bstartswith", "endswith", "glob", "iglob",
                  "regex")
LIST_OPERATORS = ("in", "intersects", "pmatch")

_BLANK = re.compile(r"\s*")
FIELD = re.compile(r"[A-Za-z_]\w*(\.\w+)+(\[[^\]\s]*\])?(\.\w+)*")
_NAME = re.compile(r"[A-Za-z_][\w-]*")
_BARE = re.compile(r"[^\s(),'\"]+")
_WORD = re.compile(r"[A-Za-z_]\w*")


class ConditionError(ValueError):
    def __init__(self, reason: str, offset: int):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


@dataclass(frozen=True)
class And:
    items: tuple


@dataclass(frozen=True)
class Or:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: object


@dataclass(frozen=True)
class Check:
    """FIELD OP VALUE; value is a str, or a tuple of str for the list operators; None
    for exists."""
    field: str
    op: str
    value: str | tuple[str, ...] | None = None


@dataclass(frozen=True)
class MacroRef:
    name: str
    offset: int


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, reason: str, at: int | None = None) -> ConditionError:
        return ConditionError(reason, self.pos if at is None else at)

    def skip(self) -> None:
        self.pos = _BLANK.match(self.text, self.pos).end()

    def peek_word(self) -> str | None:
        self.skip()
        match = _WORD.match(self.text, self.pos)
        return match.group() if match else None

    def take_word(self, word: str) -> bool:
        if self.peek_word() == word:
            self.pos += len(word)
            return True
        return False

    def take(self, literal: str) -> bool:
        self.skip()
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def parse(self):
        node = self.parse_or()
        self.skip()
        if self.pos != len(self.text):
            raise self.error(f"unexpected {self.text[self.pos:self.pos + 20]!r}")
        return node

    def parse_or(self):
        items = [self.parse_and()]
        while self.take_word("or"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self):
        items = [self.parse_not()]
        while self.take_word("and"):
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_not(self):
        if self.take_word("not"):
            return Not(self.parse_not())
        if self.take("("):
            node = self.parse_or()
            if not self.take(")"):
                raise self.error("expected ')'")
            return node
        return self.parse_check()

    def parse_check(self):
        self.skip()
        start = self.pos
        field = FIELD.match(self.text, self.pos)
        if field is None:
            name = _NAME.match(self.text, self.pos)
            if name is None or name.group() in ("and", "or", "not"):
                raise self.error("expected a field, a macro or '('")
            self.pos = name.end()
            return MacroRef(name.group(), start)
        self.pos = field.end()
        op = self.parse_operator(field.group())
        if op == "exists":
            return Check(field.group(), op)
        if op in LIST_OPERATORS:
            return Check(field.group(), op, self.parse_list())
        return Check(field.group(), op, self.parse_value())

    def parse_operator(self, field: str) -> str:
        self.skip()
        for op in COMPARISONS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return "=" if op == "==" else op
        word = self.peek_word()
        if word in WORD_OPERATORS or word in LIST_OPERATORS or word == "exists":
            self.pos += len(word)
            return word
        raise self.error(f"expected an operator after {field}" + (f", not {word!r}" if word else ""))

    def parse_value(self) -> str:
        self.skip()
        if self.pos < len(self.text) and self.text[self.pos] in "'\"":
            return self.parse_quoted()
        bare = _BARE.match(self.text, self.pos)
        if bare is None:
            raise self.error("expected a value")
        self.pos = bare.end()
        return bare.group()

    def parse_quoted(self) -> str:
        """A quoted string: a backslash before a quote or a backslash makes it literal;
        any other backslash is kept as it is."""
        quote, start = self.text[self.pos], self.pos
        chars, i = [], self.pos + 1
        while i < len(self.text) and self.text[i] != quote:
            if self.text[i] == "\\" and i + 1 < len(self.text) and self.text[i + 1] in "\\'\"":
                i += 1
            chars.append(self.text[i])
            i += 1
        if i >= len(self.text):
            raise self.error("unterminated string", start)
        self.pos = i + 1
        return "".join(chars)

    def parse_list(self) -> tuple[str, ...]:
        if not self.take("("):
            raise self.error("expected '(' to open a list")
        items = []
        if self.take(")"):
            return ()
        while True:
            items.append(self.parse_value())
            if self.take(")"):
                return tuple(items)
            if not self.take(","):
                raise self.error("expected ',' or ')' in a list")


def parse(text: str):
    """The AST of a condition; ConditionError (with an offset) when it is not valid."""
    if not text or not text.strip():
        raise ConditionError("empty condition", 0)
    return _Parser(text).parse()


def expand(node, macros: dict, lists: dict[str, tuple[str, ...]], _seen: tuple[str, ...] = ()):
    """The AST with macro references replaced by their (expanded) conditions and list
    names in list values by their items. `macros` maps names to parsed ASTs. A missing
    or self-referencing macro raises ConditionError."""
    if isinstance(node, MacroRef):
        if node.name in _seen:
            raise ConditionError(f"macro {node.name} refers to itself ({' -> '.join(_seen + (node.name,))})",
                                 node.offset)
        if node.name not in macros:
            raise ConditionError(f"undefined macro {node.name}", node.offset)
        return expand(macros[node.name], macros, lists, _seen + (node.name,))
    if isinstance(node, (And, Or)):
        return type(node)(tuple(expand(item, macros, lists, _seen) for item in node.items))
    if isinstance(node, Not):
        return Not(expand(node.item, macros, lists, _seen))
    if isinstance(node.value, tuple):
        return Check(node.field, node.op, expand_items(node.value, lists))
    return node


def expand_items(items, lists: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """List items with the names of lists replaced by their items (lists are expanded
    when defined, so one level suffices)."""
    result = []
    for item in items:
        result.extend(lists.get(item, (item,)))
    return tuple(result)


def checks(node):
    """Every check in an (expanded) condition."""
    if isinstance(node, (And, Or)):
        for item in node.items:
            yield from checks(item)
    elif isinstance(node, Not):
        yield from checks(node.item)
    elif isinstance(node, Check):
        yield node


def fields(node) -> set[str]:
    """Every field an (expanded) condition reads."""
    return {check.field for check in checks(node)}

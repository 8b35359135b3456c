"""Numpy dtypes and constants derived from ebpf/events.h, the single source of truth.

The header is written in a small subset of C (see its opening comment); this module
reads that subset and refuses anything else, so the two sides cannot drift. It also
refuses implicit padding: every hole in a struct must be an explicit field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from sensor import resources

_SCALARS = {
    "__u8": np.dtype("u1"),
    "__u16": np.dtype("<u2"),
    "__u32": np.dtype("<u4"),
    "__u64": np.dtype("<u8"),
    "__s32": np.dtype("<i4"),
    "__s64": np.dtype("<i8"),
}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^\s*#define\s+(\w+)\s+(\S+)\s*$", re.M)
_STRUCT = re.compile(r"struct\s+(\w+)\s*\{(.*?)\}\s*;", re.S)
_FIELD = re.compile(r"^(struct\s+\w+|\w+)\s+(\w+)(?:\[(\w+)\])?$")


class LayoutError(ValueError):
    """events.h uses something outside the subset this parser understands."""


@dataclass(frozen=True)
class Layout:
    constants: dict[str, int]
    structs: dict[str, np.dtype]

    def kinds(self) -> dict[int, str]:
        """Event kind number -> short name, from the MAYFLY_EVENT_* constants."""
        prefix = "MAYFLY_EVENT_"
        return {v: k[len(prefix):].lower() for k, v in self.constants.items() if k.startswith(prefix)}


def parse(text: str) -> Layout:
    text = _COMMENT.sub("", text)
    constants: dict[str, int] = {}
    for name, value in _DEFINE.findall(text):
        try:
            constants[name] = int(value, 0)
        except ValueError:
            raise LayoutError(f"#define {name} {value}: only integer constants are allowed") from None
    structs: dict[str, np.dtype] = {}
    for name, body in _STRUCT.findall(text):
        structs[name] = _struct_dtype(name, body, constants, structs)
    return Layout(constants, structs)


def _struct_dtype(name: str, body: str, constants: dict[str, int], known: dict[str, np.dtype]) -> np.dtype:
    names, formats, offsets = [], [], []
    offset, max_align = 0, 1
    for decl in (d.strip() for d in body.split(";")):
        if not decl:
            continue
        match = _FIELD.match(" ".join(decl.split()))
        if not match:
            raise LayoutError(f"struct {name}: cannot read field declaration {decl!r}")
        ctype, field, count = match.groups()
        dtype, align = _field_type(name, ctype, count, constants, known)
        if offset % align:
            raise LayoutError(f"struct {name}: implicit padding before {field}; add an explicit _pad field")
        names.append(field)
        formats.append(dtype)
        offsets.append(offset)
        offset += dtype.itemsize
        max_align = max(max_align, align)
    if offset % max_align:
        raise LayoutError(f"struct {name}: implicit tail padding; add an explicit _pad field")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": offset})


def _field_type(struct: str, ctype: str, count: str | None, constants: dict[str, int],
                known: dict[str, np.dtype]) -> tuple[np.dtype, int]:
    if ctype == "char":
        if count is None:
            raise LayoutError(f"struct {struct}: a lone char field; use __u8")
        return np.dtype(f"S{_array_len(struct, count, constants)}"), 1
    if ctype.startswith("struct "):
        inner = known.get(ctype.split()[1])
        if inner is None:
            raise LayoutError(f"struct {struct}: {ctype} is not defined before use")
        align = _alignment(inner)
        base = inner
    elif ctype in _SCALARS:
        base = _SCALARS[ctype]
        align = base.itemsize
    else:
        raise LayoutError(f"struct {struct}: type {ctype} is not one of {sorted(_SCALARS)}")
    if count is not None:
        return np.dtype((base, (_array_len(struct, count, constants),))), align
    return base, align


def _alignment(dtype: np.dtype) -> int:
    # Natural C alignment; numpy's own .alignment is 1 for packed (offset-given) dtypes.
    if dtype.names:
        return max(_alignment(dtype.fields[f][0]) for f in dtype.names)
    if dtype.subdtype:
        return _alignment(dtype.subdtype[0])
    return 1 if dtype.kind == "S" else dtype.itemsize


def _array_len(struct: str, count: str, constants: dict[str, int]) -> int:
    if count.isdigit():
        return int(count)
    if count not in constants:
        raise LayoutError(f"struct {struct}: array length {count} is not a #define in the header")
    return constants[count]


@cache
def truncate(dtype: np.dtype, width: int) -> np.dtype:
    """The first `width` bytes of a struct: the fields that fit, and the last array
    field cut short (records are sent without their unused tail)."""
    if width >= dtype.itemsize:
        return dtype
    names, formats, offsets = [], [], []
    for name in dtype.names:
        field, offset = dtype.fields[name][:2]
        if offset + field.itemsize <= width:
            names.append(name), formats.append(field), offsets.append(offset)
        elif offset < width and field.subdtype:
            base = field.subdtype[0]
            names.append(name), formats.append((base, ((width - offset) // base.itemsize,))), offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": width})


@cache
def events() -> Layout:
    """The layout of the installed events.h."""
    return parse(resources.ebpf_file("events.h").read_text())

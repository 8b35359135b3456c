"""The kernel's uapi constants Python needs (capability and ptrace request names,
openat2's resolve flags), read from the uapi headers the system has, so that Mayfly
keeps no copy of them."""

from __future__ import annotations

import re
from functools import cache

INCLUDE = "/usr/include"


@cache
def defines(headers: tuple[str, ...], prefix: str) -> tuple[tuple[str, int], ...]:
    """(name, value) of the `#define <prefix>NAME <number>` lines of the headers, in
    order; none when the headers are not installed."""
    found = []
    for header in headers:
        try:
            with open(f"{INCLUDE}/{header}") as f:
                text = f.read()
        except OSError:
            continue
        found += [(name, int(number, 0)) for name, number in
                  re.findall(rf"^#define ({prefix}\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*(?:/\*.*)?$", text, re.M)]
    return tuple(found)


def names(headers: tuple[str, ...], prefix: str, exclude: tuple[str, ...] = ()) -> dict[int, str]:
    """value -> name (the first name of a value wins)."""
    found: dict[int, str] = {}
    for name, value in defines(headers, prefix):
        if not name.startswith(exclude):
            found.setdefault(value, name)
    return found


def resolve_flags() -> dict[str, int]:
    """openat2's RESOLVE_* flags by name."""
    return dict(defines(("linux/openat2.h",), "RESOLVE_"))


def capabilities() -> dict[int, str]:
    return names(("linux/capability.h",), "CAP_", ("CAP_LAST_CAP",))


def ptrace_requests() -> dict[int, str]:
    return names(("linux/ptrace.h", "x86_64-linux-gnu/asm/ptrace-abi.h", "asm/ptrace-abi.h"), "PTRACE_",
                 ("PTRACE_O_", "PTRACE_EVENT", "PTRACE_SYSCALL_INFO_", "PTRACE_PEEKSIGINFO_SHARED"))

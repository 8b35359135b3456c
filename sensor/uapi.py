"""Names of the kernel's uapi constants (capabilities, ptrace requests), read from the
uapi headers the system has, so that Mayfly keeps no copy of them."""

from __future__ import annotations

import re
from functools import cache

INCLUDE = "/usr/include"


@cache
def names(headers: tuple[str, ...], prefix: str, exclude: tuple[str, ...] = ()) -> dict[int, str]:
    """value -> name of the `#define <prefix>NAME <number>` lines of the headers (the
    first name of a value wins); {} when the headers are not installed."""
    found: dict[int, str] = {}
    for header in headers:
        try:
            with open(f"{INCLUDE}/{header}") as f:
                text = f.read()
        except OSError:
            continue
        for name, number in re.findall(rf"^#define ({prefix}\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*(?:/\*.*)?$", text, re.M):
            if not name.startswith(exclude):
                found.setdefault(int(number, 0), name)
    return found


def capabilities() -> dict[int, str]:
    return names(("linux/capability.h",), "CAP_", ("CAP_LAST_CAP",))


def ptrace_requests() -> dict[int, str]:
    return names(("linux/ptrace.h", "x86_64-linux-gnu/asm/ptrace-abi.h", "asm/ptrace-abi.h"), "PTRACE_",
                 ("PTRACE_O_", "PTRACE_EVENT", "PTRACE_SYSCALL_INFO_", "PTRACE_PEEKSIGINFO_SHARED"))

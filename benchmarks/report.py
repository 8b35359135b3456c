"""What every benchmark's section of RESULTS.md shares: the machine line, and writing
the section in place between its markers."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    return (f"{model.group(1) if model else platform.machine()}, {os.cpu_count()} CPUs, kernel "
            f"{platform.release()}, {'VM' if 'hypervisor' in cpuinfo else 'bare metal'}, "
            f"Python {platform.python_version()}")


def write_section(path: Path, begin: str, end: str, section: str) -> None:
    """Replace the text between `begin` and `end` (the section includes both), or append."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)

"""What every benchmark's section of RESULTS.md shares: the machine line, and writing
the section in place between its markers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
import platform
import re
from pathlib import Path

# Benchmarks pin the workload and the sensor (or its peer) to CPUs of their own.
WORKLOAD_CPU, SENSOR_CPU = 0, 1


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


def main(name: str, doc: str, begin: str, end: str, run: Callable[[bool], dict], render: Callable[[dict, str], str],
         needs_root: bool = False) -> None:
    """The command line every benchmark has: [--quick] [--output RESULTS.md]."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = parser.parse_args()
    if needs_root and os.geteuid() != 0:
        sys.exit(f"the {name} benchmark loads BPF programs: run it as root")
    results = run(args.quick)
    results["output"] = args.output  # where the section goes, and anything beside it (plots)
    write_section(args.output, begin, end, render(results, "make bench" if not args.quick
                                                  else f"benchmarks/{name}.py --quick"))
    print(f"wrote {args.output}")

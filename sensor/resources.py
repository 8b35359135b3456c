"""Where the installed package keeps its data: the C sources and the rule files.

setup.py ships the top-level `ebpf/` and `rules/` folders as the subpackages
`sensor.ebpf` and `sensor.rules`, so they are found the same way from a source
checkout (editable install) and from a wheel.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable


def ebpf_file(name: str) -> Traversable:
    return resources.files("sensor.ebpf") / name


def ebpf_dir() -> Traversable:
    return resources.files("sensor.ebpf")


def builtin_rule_files() -> list[Traversable]:
    """The shipped rule files, in load order (stable before incubating before sandbox)."""
    root = resources.files("sensor.rules")
    return sorted((f for f in root.iterdir() if f.name.endswith(".yaml")), key=_maturity_order)


def _maturity_order(f: Traversable) -> tuple[int, str]:
    for rank, word in enumerate(("incubating", "sandbox")):
        if word in f.name:
            return rank + 1, f.name
    return 0, f.name

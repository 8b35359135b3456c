"""Compile and load Mayfly's C programs through BCC.

Programs are configured with `-D` cflags only. `render()` gives the exact input BCC
compiles (cflags, then each source file) for `mayfly run --print-ebpf`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sensor import distro, host, kernel_headers, resources

SOURCE = "mayfly.bpf.c"
HEADERS = ("events.h",)


class BccMissing(RuntimeError):
    pass


def import_bcc():
    """The system BCC bindings, or a BccMissing error that names the package to install."""
    try:
        import bcc
    except ImportError:
        package = distro.detect().bcc_package
        raise BccMissing(
            f"BCC's Python bindings are not importable: install the system package {package}. "
            "(The PyPI project named 'bcc' is unrelated; do not pip-install it. In a venv, "
            "`make setup` links the system bcc package in.)") from None
    return bcc


@dataclass(frozen=True)
class ProgramConfig:
    ringbuf_pages: int = 1024  # 4 MiB with 4 KiB pages; must be a power of two
    max_procs: int = 65536     # entries of the parent_of LRU map

    def __post_init__(self):
        if self.ringbuf_pages <= 0 or self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise ValueError(f"ringbuf_pages must be a power of two, not {self.ringbuf_pages}")
        if self.max_procs <= 0:
            raise ValueError(f"max_procs must be positive, not {self.max_procs}")

    def cflags(self) -> list[str]:
        return [
            f"-I{resources.ebpf_dir()}",
            f"-DMAYFLY_RINGBUF_PAGES={self.ringbuf_pages}",
            f"-DMAYFLY_MAX_PROCS={self.max_procs}",
        ]


def render(config: ProgramConfig) -> str:
    """The cflags and the C sources, exactly as BCC receives them."""
    parts = [f"// BCC cflags: {' '.join(config.cflags())}"]
    for name in (*HEADERS, SOURCE):
        parts.append(f"// ---- {resources.ebpf_file(name)} ----")
        parts.append(resources.ebpf_file(name).read_text())
    return "\n".join(parts)


def load(config: ProgramConfig):
    """Prepare the host (mounts, header tree), then compile, load and attach the programs."""
    bcc = import_bcc()
    host.prepare()
    kernel_headers.resolve(link=True)
    return bcc.BPF(src_file=str(resources.ebpf_file(SOURCE)).encode(), cflags=config.cflags())

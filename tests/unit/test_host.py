"""Mount table, cgroup2 discovery and capabilities, from fixture files."""

import os

import pytest

from sensor.system import host

HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
nodev /sys/kernel/tracing tracefs rw,relatime 0 0
"""
UNIFIED = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"


def mounts_file(tmp_path, text):
    path = tmp_path / "mounts"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("table, root", [(HYBRID, "/sys/fs/cgroup/unified"), (UNIFIED, "/sys/fs/cgroup")])
def test_cgroup2_root_comes_from_the_mount_table(tmp_path, table, root):
    assert host.cgroup2_root(mounts_file(tmp_path, table)) == root


def test_no_cgroup2_is_a_clear_error(tmp_path):
    with pytest.raises(host.HostError, match="no cgroup2 filesystem is mounted"):
        host.cgroup2_root(mounts_file(tmp_path, "proc /proc proc rw 0 0\n"))


def test_escaped_mount_points(tmp_path):
    path = mounts_file(tmp_path, "none /mnt/with\\040space tracefs rw 0 0\n")
    assert host.find_mount("tracefs", path).target == "/mnt/with space"


def test_capabilities_from_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t000000c000200000\n")  # bits 21, 38, 39
    caps = host.effective_capabilities(str(status))
    assert caps == {"CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF"}
    assert host.can_load_bpf(caps)
    assert host.can_load_bpf({"CAP_BPF", "CAP_PERFMON"})
    assert not host.can_load_bpf({"CAP_BPF"})
    assert not host.can_load_bpf(set())


def test_page_out_reclaims_the_pages_of_the_files_named(tmp_path):
    """What the sensor does to the compilers' code once started, on a file of its own."""
    import mmap

    path = tmp_path / "libfake-compiler.so"
    path.write_bytes(os.urandom(4 << 20))

    def resident_kib() -> int:
        with open("/proc/self/smaps") as f:
            lines = f.read().split("\n")
        at = next(i for i, line in enumerate(lines) if line.endswith(str(path)))
        return next(int(line.split()[1]) for line in lines[at:] if line.startswith("Rss:"))

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert sum(mapped[i] for i in range(0, len(mapped), 4096)) >= 0  # every page touched
        assert resident_kib() >= 4000
        assert host.page_out(("libfake-compiler",)) >= 4 << 20
        assert resident_kib() < 1000

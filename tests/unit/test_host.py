"""Mount table, cgroup2 discovery and capabilities, from fixture files."""

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

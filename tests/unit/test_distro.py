"""Distribution detection picks the right package names for set-up and error messages."""

import pytest

from sensor.system import distro


@pytest.mark.parametrize("os_release, family, bcc", [
    ('ID=debian\nVERSION_ID="12"\n', "debian", "python3-bpfcc"),
    ('ID=ubuntu\nID_LIKE=debian\n', "debian", "python3-bpfcc"),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "fedora", "python3-bcc"),
    ('ID=fedora\n', "fedora", "python3-bcc"),
    ('ID=arch\n', "unknown", "the BCC Python bindings"),
])
def test_family_and_bcc_package(tmp_path, os_release, family, bcc):
    path = tmp_path / "os-release"
    path.write_text(os_release)
    detected = distro.detect(str(path))
    assert (detected.family, detected.bcc_package) == (family, bcc)


def test_header_packages_best_first(monkeypatch):
    monkeypatch.setattr(distro.platform, "machine", lambda: "x86_64")
    assert distro.Distro("debian", "debian").header_packages("6.1.0-9-amd64") == [
        "linux-headers-6.1.0-9-amd64", "linux-headers-amd64"]
    assert distro.Distro("debian", "ubuntu").header_packages("6.8.0-31-generic")[-1] == "linux-headers-generic"
    assert distro.Distro("fedora", "fedora").header_packages("6.5.6-300.fc39.x86_64")[0] == \
        "kernel-devel-6.5.6-300.fc39.x86_64"


def test_missing_os_release(tmp_path):
    assert distro.detect(str(tmp_path / "none")).family == "unknown"

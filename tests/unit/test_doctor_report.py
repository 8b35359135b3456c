"""The doctor's report and verdict, from given checks (the probes themselves run in tests/kernel)."""

from sensor.doctor import Check, report


def test_report_lists_every_check_and_the_failed_required_ones():
    checks = [Check("BTF", True, "/sys/kernel/btf/vmlinux"),
              Check("ring buffer", False, "EPERM"),
              Check("kprobe programs", False, "not built", required=False, note="informational")]
    lines = report(checks).splitlines()
    assert lines[1].split()[:2] == ["ok", "BTF"]
    assert lines[2].split()[:3] == ["MISSING", "ring", "buffer"]
    assert lines[3].split()[:3] == ["absent", "kprobe", "programs"] and lines[3].endswith("[informational]")
    assert lines[-1] == "1 required check(s) failed: ring buffer"


def test_all_passed():
    assert report([Check("BTF", True, "x"), Check("LSM programs", False, "EPERM", required=False)]
                  ).splitlines()[-1] == "all required checks passed"

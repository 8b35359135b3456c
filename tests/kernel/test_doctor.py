"""`mayfly doctor` tells the truth about this host, checked against independent evidence."""

import os

from sensor import doctor
from sensor.system import host


def by_name(checks):
    return {c.name: c for c in checks}


def test_required_checks_pass_on_a_prepared_host():
    checks = doctor.run(fix=True)
    failed = [f"{c.name}: {c.detail}" for c in checks if c.required and not c.ok]
    assert failed == []


def test_informational_probes_match_the_kernel():
    checks = by_name(doctor.run(fix=True))
    tracefs = host.tracefs_root()
    # kprobes need the kprobe_events interface, which exists only when the kernel has them.
    assert checks["kprobe programs"].ok == os.path.exists(os.path.join(tracefs, "kprobe_events"))
    # BPF LSM programs cannot load unless "bpf" is among the active LSMs (they may still
    # be refused when it is: this VM lists it and answers EPERM).
    with open(os.path.join(host.SECURITYFS, "lsm")) as f:
        if "bpf" not in f.read().split(","):
            assert not checks["LSM programs"].ok
    for name in ("fentry programs", "LSM programs"):
        assert "not probed" not in checks[name].detail


def test_cgroup2_is_found_from_the_mount_table():
    checks = by_name(doctor.run())
    assert checks["cgroup2"].ok
    assert checks["cgroup2"].detail == f"mounted at {host.find_mount('cgroup2').target}"

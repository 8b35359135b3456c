"""`mayfly doctor`: what this host offers against what Mayfly needs, by real probes.

Each BPF feature is checked by loading (and where it matters attaching) a tiny program,
not by reading kernel versions or config files, which lie on backported and
stripped-down kernels.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sensor.system import host, kernel_headers
from sensor.kernel.bpf_program import BccMissing, import_bcc


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True
    note: str = ""

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "MISSING" if self.required else "absent"


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """libbcc prints compiler and loader errors on fd 2: keep them for the report."""
    out: list[str] = []
    with tempfile.TemporaryFile("w+") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.extend(line.strip() for line in tmp if line.strip())


def _probe(name: str, required: bool, note: str, attempt: Callable[[], str]) -> Check:
    with _captured_stderr() as errors:
        try:
            detail, ok = attempt(), True
        except Exception as e:  # a probe's failure is the finding, whatever its type
            detail, ok = f"{type(e).__name__}: {e}".strip(), False
    if not ok and errors:
        detail = f"{detail} ({errors[-1][:160]})"
    return Check(name, ok, detail if ok else detail[:300], required, note)


def _ringbuf(bcc) -> str:
    bcc.BPF(text=b"BPF_RINGBUF_OUTPUT(probe_rb, 1); int probe(void *ctx) { return 0; }").cleanup()
    return "BPF_MAP_TYPE_RINGBUF created"


def _send_signal(bcc) -> str:
    b = bcc.BPF(text=b"int probe(void *ctx) { bpf_send_signal(0); return 0; }")
    try:
        b.load_func(b"probe", bcc.BPF.TRACEPOINT)
    finally:
        b.cleanup()
    return "a tracepoint program calling it loads"


def _task_pt_regs(bcc) -> str:
    # A successful exec is completed from the new image's register frame.
    b = bcc.BPF(text=b"int probe(void *ctx) { struct pt_regs *r = (struct pt_regs *)"
                     b"bpf_task_pt_regs(bpf_get_current_task_btf()); return r != 0; }")
    try:
        b.load_func(b"probe", bcc.BPF.TRACEPOINT)
    finally:
        b.cleanup()
    return "a tracepoint program calling it loads"


def _cgroup_skb(bcc) -> str:
    root = host.cgroup2_root()
    path = os.path.join(root, f"mayfly-doctor-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    b = bcc.BPF(text=b"int probe(struct __sk_buff *skb) { return 1; }")
    try:
        fn = b.load_func(b"probe", bcc.BPF.CGROUP_SKB)
        fd = os.open(path, os.O_RDONLY)
        try:
            b.attach_func(fn, fd, bcc.BPFAttachType.CGROUP_INET_EGRESS)
            b.detach_func(fn, fd, bcc.BPFAttachType.CGROUP_INET_EGRESS)
        finally:
            os.close(fd)
    finally:
        b.cleanup()
        os.rmdir(path)
    return f"attached to a cgroup under {root}"


def _kprobe(bcc) -> str:
    b = bcc.BPF(text=b"int probe(void *ctx) { return 0; }")
    try:
        b.attach_kprobe(event=b"do_nanosleep", fn_name=b"probe")
    finally:
        b.cleanup()
    return "attached to do_nanosleep"


def _fentry(bcc) -> str:
    bcc.BPF(text=b"KFUNC_PROBE(do_nanosleep) { return 0; }").cleanup()
    return "loaded on do_nanosleep"


def _lsm(bcc) -> str:
    bcc.BPF(text=b"LSM_PROBE(bpf, int cmd) { return 0; }").cleanup()
    return "loaded on the bpf hook"


def _prepare_mounts(fix: bool) -> list[Check]:
    if fix:
        with contextlib.suppress(host.HostError):
            host.prepare()
    tracefs = host.tracefs_root()
    securityfs = host.find_mount("securityfs")
    checks = [
        Check("tracefs", tracefs is not None,
              f"mounted at {tracefs}" if tracefs else f"not mounted (mayfly run mounts it at {host.TRACEFS})"),
        Check("securityfs", securityfs is not None,
              f"mounted at {securityfs.target}" if securityfs else "not mounted", required=False,
              note="needed to read the lockdown mode"),
        _lockdown(securityfs),
    ]
    try:
        checks.append(Check("cgroup2", True, f"mounted at {host.cgroup2_root()}"))
    except host.HostError as e:
        checks.append(Check("cgroup2", False, str(e)))
    return checks


def _lockdown(securityfs: host.Mount | None) -> Check:
    # Lockdown "confidentiality" forbids bpf_probe_read*, which the programs need.
    path = os.path.join(securityfs.target if securityfs else host.SECURITYFS, "lockdown")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return Check("lockdown", True, "no lockdown LSM")
    mode = text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()
    return Check("lockdown", mode != "confidentiality", f"mode {mode}")


def run(fix: bool = False) -> list[Check]:
    """All checks. With `fix`, first mount what is missing and link a fallback header tree."""
    caps = host.effective_capabilities()
    privileged = host.can_load_bpf(caps)
    checks = [
        Check("privileges", privileged,
              f"uid {os.geteuid()}, effective: {', '.join(sorted(caps)) or 'none of CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN'}"),
        Check("BTF", os.path.exists(host.BTF_VMLINUX),
              host.BTF_VMLINUX if os.path.exists(host.BTF_VMLINUX) else f"{host.BTF_VMLINUX} is missing"),
        *_prepare_mounts(fix),
    ]
    try:
        tree = kernel_headers.resolve(link=fix)
        linked = "" if tree.origin != "fallback" else (" (linked for BCC)" if fix else " (run with --fix to link)")
        checks.append(Check("kernel headers", True, f"{tree.version} at {tree.path}, {tree.origin}{linked}"))
        headers_ok = tree.origin != "fallback" or fix
    except kernel_headers.HeadersMissing as e:
        checks.append(Check("kernel headers", False, str(e)))
        headers_ok = False
    try:
        bcc = import_bcc()
        checks.append(Check("bcc", True, f"{getattr(bcc, '__version__', '?')} from {os.path.dirname(bcc.__file__)}"))
    except BccMissing as e:
        checks.append(Check("bcc", False, str(e)))
        bcc = None

    unused = "informational: Mayfly does not use it"
    probes = [
        ("ring buffer", True, "", _ringbuf),
        ("bpf_send_signal", True, "", _send_signal),
        ("bpf_task_pt_regs", True, "", _task_pt_regs),
        ("cgroup_skb attach", True, "", _cgroup_skb),
        ("kprobe programs", False, unused, _kprobe),
        ("fentry programs", False, unused, _fentry),
        ("LSM programs", False, unused, _lsm),
    ]
    unmet = [what for what, met in (("privileges", privileged), ("bcc", bcc is not None),
                                     ("a linked header tree (--fix)", headers_ok),
                                     ("tracefs", host.tracefs_root() is not None)) if not met]
    for name, required, note, attempt in probes:
        if unmet:
            checks.append(Check(name, False, f"not probed: needs {', '.join(unmet)}", required, note))
        else:
            checks.append(_probe(name, required, note, lambda attempt=attempt: attempt(bcc)))
    return checks


def report(checks: list[Check]) -> str:
    lines = [f"Mayfly doctor on {platform.node()}, kernel {platform.release()} ({platform.machine()})"]
    for check in checks:
        note = f"  [{check.note}]" if check.note else ""
        lines.append(f"  {check.status:<8} {check.name:<18} {check.detail}{note}")
    failed = [c.name for c in checks if c.required and not c.ok]
    lines.append(f"{len(failed)} required check(s) failed: {', '.join(failed)}" if failed
                 else "all required checks passed")
    return "\n".join(lines)

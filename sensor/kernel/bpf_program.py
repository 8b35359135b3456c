"""Compile, load, attach and configure Mayfly's C programs through BCC.

Programs are configured with `-D` cflags only. `render()` gives the exact input BCC
compiles (cflags, then each source file) for `mayfly run --print-ebpf`.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import numpy as np

from sensor import resources
from sensor.kernel import layout, maps, syscalls
from sensor.system import distro, host, kernel_headers

SOURCE = "mayfly.bpf.c"
HEADERS = ("events.h",)
# The schema version of events.h that sensor/kernel/split.py and sensor/kernel/syscalls.py read.
EXPECTED_SCHEMA = 8

# Tracepoints attached by name (raw_syscalls' are raw tracepoints and always exist).
REQUIRED_TRACEPOINTS = ("sched/sched_process_exec", "sched/sched_process_exit", "task/task_newtask",
                        "signal/signal_deliver")
# Optional ones are compiled in only when present, through these defines.
OPTIONAL_TRACEPOINTS = {"cgroup/cgroup_mkdir": "MAYFLY_TP_CGROUP", "cgroup/cgroup_rmdir": "MAYFLY_TP_CGROUP",
                        "cgroup/cgroup_attach_task": "MAYFLY_TP_CGROUP_ATTACH",
                        "sock/inet_sock_set_state": "MAYFLY_TP_INET_SOCK_SET_STATE"}
FLOW_PROGRAMS = {b"flow_ingress": 0, b"flow_egress": 1}  # BPF_CGROUP_INET_INGRESS / _EGRESS
# The spawn gate's held processes (`gated_tasks`, events.h), pinned in bpffs under this
# name, so that a sensor started after a crash finds what an earlier one held.
GATE_PIN = f"mayfly_gated_v{EXPECTED_SCHEMA}"


def gate_pin_define(bpffs: str) -> str:
    return f'MAYFLY_GATE_PIN="{os.path.join(bpffs, GATE_PIN)}"'


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
    # 16 MiB with 4 KiB pages, a power of two: room for batches of thousands of records
    # (user space's cost is mostly per batch) with the pressure threshold still far off.
    ringbuf_pages: int = 4096
    spill_pages: int = 64         # lifecycle events that find the main ring full (1,000 or more)
    cgroup_rate: int = 50_000     # events/s one cgroup may emit on average; 0: no limit
    cgroup_burst: int = 100_000   # events one cgroup may emit at once
    ring_pressure: float = 0.25   # over its rate, a cgroup is held back only while the ring is this full (0: always)
    wakeup_every: int = 0         # wake user space every N records per CPU (and at once for lifecycle); 0: one per ring page
    flows: bool = True            # per-cgroup flow accounting with cgroup_skb
    count_syscalls: bool = True   # count every syscall per cgroup (syscall_counts records)
    max_procs: int = 65536
    pending_slots: int = 4096     # per-thread slots for syscalls between enter and exit (a power of two)
    max_pending: int = 8192       # ...and the hash behind them, for threads that share a slot
    max_cgroups: int = 16384
    max_fds: int = 262144
    max_flows: int = 65536
    count_slots: int = 1024       # cgroups counted at once (2 KiB per CPU each)

    def __post_init__(self):
        for name in ("ringbuf_pages", "spill_pages", "pending_slots"):
            value = getattr(self, name)
            if value <= 0 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, not {value}")
        if not 0 <= self.ring_pressure <= 1:
            raise ValueError(f"ring_pressure is a fraction of the ring, from 0 to 1, not {self.ring_pressure}")
        for name in ("cgroup_rate", "cgroup_burst", "max_procs", "max_pending", "max_cgroups",
                     "max_fds", "max_flows", "count_slots"):
            if getattr(self, name) < (0 if name == "cgroup_rate" else 1):
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.wakeup_every < 0:
            raise ValueError(f"wakeup_every must be positive (or 0: one per ring page), not {self.wakeup_every}")

    @property
    def wakeup_records(self) -> int:
        """Records per CPU between wake-ups, as the programs are given it."""
        return self.wakeup_every or self.ringbuf_pages

    def cflags(self, tracepoint_defines: list[str] = ()) -> list[str]:
        sizes = {"RINGBUF_PAGES": self.ringbuf_pages, "SPILL_PAGES": self.spill_pages,
                 "MAX_PROCS": self.max_procs, "MAX_PENDING": self.max_pending, "PENDING_SLOTS": self.pending_slots,
                 "MAX_CGROUPS": self.max_cgroups, "MAX_FDS": self.max_fds, "MAX_FLOWS": self.max_flows,
                 "COUNT_SLOTS": self.count_slots, "COUNT_SYSCALLS": int(self.count_syscalls),
                 "EXPECTED_SCHEMA": EXPECTED_SCHEMA}
        return ([f"-I{resources.ebpf_dir()}"] + [f"-DMAYFLY_{k}={v}" for k, v in sizes.items()]
                + [f"-D{d}" for d in sorted(set(tracepoint_defines))])

    def kernel_config(self) -> np.ndarray:
        """The `config` map's entry (self_tgid is filled in by the sensor)."""
        entry = np.zeros(1, layout.events().structs["mayfly_config"])
        entry["wakeup_every"] = self.wakeup_records
        if self.cgroup_rate:
            entry["cost_ns"] = 1_000_000_000 // self.cgroup_rate
            entry["burst_ns"] = entry["cost_ns"] * self.cgroup_burst
        return entry


def tracepoint_present(tracefs: str, name: str) -> bool:
    return os.path.exists(os.path.join(tracefs, "events", name, "format"))


def tracepoint_defines(tracefs: str | None) -> list[str]:
    """Defines for the optional tracepoints present; HostError naming any required one missing."""
    if tracefs is None:
        raise host.HostError("tracefs is not mounted: mount it at /sys/kernel/tracing")

    def present(name: str) -> bool:
        return tracepoint_present(tracefs, name)

    missing = [tp for tp in REQUIRED_TRACEPOINTS if not present(tp)]
    if missing:
        raise host.HostError(f"this kernel lacks tracepoints Mayfly needs: {', '.join(missing)}")
    defines = [define for tp, define in OPTIONAL_TRACEPOINTS.items() if present(tp)]
    with open(os.path.join(tracefs, "events", "sched", "sched_process_exit", "format")) as f:
        if " group_dead;" in f.read():
            defines.append("MAYFLY_TP_EXIT_GROUP_DEAD")
    return defines


def render(config: ProgramConfig, defines: list[str] = ()) -> str:
    """The cflags and the C sources, exactly as BCC receives them."""
    defines = [*defines, gate_pin_define(host.BPFFS)]
    parts = [f"// BCC cflags: {' '.join(config.cflags(defines))}"]
    for name in (*HEADERS, SOURCE):
        parts.append(f"// ---- {resources.ebpf_file(name)} ----")
        parts.append(resources.ebpf_file(name).read_text())
    return "\n".join(parts)


class Programs:
    """The loaded programs and their maps. Close to detach everything."""

    def __init__(self, config: ProgramConfig):
        bcc = import_bcc()
        if not host.can_load_bpf():
            raise host.HostError("loading BPF programs needs root, or CAP_BPF with CAP_PERFMON: run Mayfly "
                                 "with sudo (`mayfly doctor` shows what this host lacks)")
        host.prepare()
        kernel_headers.resolve(link=True)
        self.tracefs = host.tracefs_root()
        self.defines = tracepoint_defines(self.tracefs) + [gate_pin_define(host.bpffs_root())]
        self.bpf = bcc.BPF(src_file=str(resources.ebpf_file(SOURCE)).encode(), cflags=config.cflags(self.defines))
        self._links: list[int] = []
        self._exits: dict[str, str] = {}  # syscall -> its exit tracepoint, attached
        try:
            if config.count_syscalls:
                # Every slot but the overflow one is free at first; user space gives
                # back those of cgroups that are gone.
                free = self["free_count_slots"]
                for slot in range(1, config.count_slots):
                    free.push(free.Leaf(slot))
            if config.flows:
                self._attach_flows(bcc)
        except Exception:
            self.close()
            raise

    def __getitem__(self, name: str):
        return self.bpf[name.encode()]

    @property
    def attached(self) -> list[str]:
        names = ["raw_syscalls/sys_enter", *REQUIRED_TRACEPOINTS]
        names += sorted({tp for tp, define in OPTIONAL_TRACEPOINTS.items() if define in self.defines})
        names += sorted(self._exits.values())
        names += [f"cgroup_skb/{p.decode()}" for p in FLOW_PROGRAMS][:len(self._links)]
        return names

    def set_capture(self, table: syscalls.SyscallTable, wanted: set[str], results: set[str],
                    needles: set[str] = frozenset(), stopping: set[str] = frozenset()) -> set[str]:
        """Capture the `wanted` syscalls, with the results of those in `results` whose
        exit tracepoint this kernel has (the others are sent at enter). Exit programs
        run only for the syscalls they are attached to, so each is attached only while
        it is wanted. `needles`: the syscalls the `needles` trie has entries for;
        `stopping`: those it has stopping ones for.
        Returns the syscalls captured with their results."""
        exits = {name: syscalls.exit_tracepoint(name) for name in sorted(wanted & results)
                 if "exit_code" not in table.syscalls[name].flags
                 and tracepoint_present(self.tracefs, syscalls.exit_tracepoint(name))}
        for name, tp in exits.items():
            if name not in self._exits:
                self.bpf.attach_tracepoint(tp=tp.replace("/", ":").encode(), fn_name=b"syscall_exit")
                self._exits[name] = tp
        for name in set(self._exits) - set(exits):
            self.bpf.detach_tracepoint(tp=self._exits.pop(name).replace("/", ":").encode())
        maps.write_array(self["syscall_specs"], table.specs(wanted, set(exits), needles, stopping))
        return set(exits)

    def _attach_flows(self, bcc) -> None:
        # A BPF link detaches by itself when its fd closes, even if the sensor dies;
        # a plain attach would leave the programs on the cgroup for good.
        root = os.open(host.cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, attach_type in FLOW_PROGRAMS.items():
                fn = self.bpf.load_func(name, bcc.BPF.CGROUP_SKB)
                self._links.append(_link_create(fn.fd, root, attach_type))
        finally:
            os.close(root)

    def close(self) -> None:
        for fd in self._links:
            os.close(fd)
        self._links = []
        self.bpf.cleanup()


_BPF_LINK_CREATE = 28  # enum bpf_cmd (linux/bpf.h): an enum, which the uapi reader cannot take


def _link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    attr = (ctypes.c_uint32 * 16)(prog_fd, target_fd, attach_type, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(syscalls.table().numbers["bpf"], _BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"BPF_LINK_CREATE failed: {os.strerror(ctypes.get_errno())}")
    return fd

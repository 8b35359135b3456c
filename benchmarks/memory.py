"""The sensor's resident memory: idle, then through a thousand short-lived containers
(needs root).

    .venv/bin/python benchmarks/memory.py [--quick] [--output benchmarks/RESULTS.md]

`mayfly run` as a user starts it (the built-in rules, alerts to a file sink), pinned to
CPU 1. Its resident set (VmRSS) once started and idle, then after every 100 runc
containers whose entrypoint is a shell running /bin/true and exiting, 1,000 in all
(quick: 200). The first hundred warm the sensor up (compiled code, caches); growth is
measured from there on, per 1,000 containers.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor.testing.containers import ContainerRig  # noqa: E402
from sensor.testing.running import RunningSensor  # noqa: E402

from endtoend import SENSOR_CPU  # noqa: E402
from report import machine, main  # noqa: E402

BEGIN, END = "<!-- memory: begin -->", "<!-- memory: end -->"
EVERY = 100
GROWTH_TARGET_MIB = 5       # per 1,000 containers
STEADY_TARGET_MIB = 250


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmRSS")


# What holds the resident set, by mapping: the compilers (BCC's clang and LLVM, Numba's
# llvmlite), the BPF maps mmap'd (the ring buffers: the kernel maps a ring's pages twice,
# so a 16 MiB ring shows as 32 MiB), the heap and other anonymous memory, and the rest
# (Python, numpy and other libraries' pages).
PARTS = (("compilers (BCC's clang and LLVM, Numba's llvmlite)", ("libLLVM", "libclang", "libllvmlite")),
         ("BPF maps mmap'd (the ring buffers, counted twice)", ("anon_inode:bpf",)),
         ("heap and anonymous memory", ("[heap]", "")),
         ("other files (Python, numpy, libraries)", None))


def rss_parts(pid: int) -> dict[str, float]:
    """The resident set by PARTS, MiB (from /proc/PID/smaps)."""
    parts = dict.fromkeys((name for name, _ in PARTS), 0.0)
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header: its path, if any, is the 6th field
                name = fields[5] if len(fields) > 5 else ""
            elif fields[0] == "Rss:":
                part = next((label for label, marks in PARTS if marks is not None and any(
                    (m == "" and name == "") or (m and m in name) for m in marks)), PARTS[-1][0])
                parts[part] += int(fields[1]) / 1024
    return parts


def run(quick: bool) -> dict:
    containers = 200 if quick else 1000
    workdir = Path(tempfile.mkdtemp(prefix="mayfly-memory-"))
    rig = ContainerRig()
    sensor = RunningSensor(workdir, "--output", f"file:{workdir / 'records.msgpack'}", cpu=SENSOR_CPU)
    try:
        time.sleep(2)  # settled
        samples = [(0, rss_mib(sensor.proc.pid))]
        parts = {"idle": rss_parts(sensor.proc.pid)}
        for done in range(1, containers + 1):
            result = rig.run(["/bin/sh", "-c", "/bin/true"])
            if result.exit_code:
                raise RuntimeError(f"container {done} exited with {result.exit_code}: {result.stderr[-500:]}")
            if done % EVERY == 0:
                samples.append((done, rss_mib(sensor.proc.pid)))
                print(f"  {done:>5} containers: {samples[-1][1]:.1f} MiB", flush=True)
        parts[f"after {containers:,} containers"] = rss_parts(sensor.proc.pid)
    finally:
        sensor.stop()
    return {"samples": samples, "parts": parts, "machine": machine(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def report(results: dict, command: str) -> str:
    samples = results["samples"]
    (_, idle), (warm_n, warm), (last_n, last) = samples[0], samples[1], samples[-1]
    growth = (last - warm) / (last_n - warm_n) * 1000 if last_n > warm_n else 0.0
    steady = max(rss for _, rss in samples[1:])
    lines = [BEGIN, "## Memory: idle, and through short-lived containers", "",
             f"Command: `{command}`. Machine: {results['machine']}. Generated {results['when']}.", "",
             "`mayfly run` with its defaults (built-in rules, a file sink); runc containers one after another, each a "
             "shell running /bin/true.", "", "| containers | resident MiB |", "| --- | --- |"]
    lines += [f"| {n:,} | {rss:.1f} |" for n, rss in samples]
    moments = list(results["parts"])
    lines += ["", "What holds it (`/proc/PID/smaps`, by mapping), MiB:", "",
              "| part | " + " | ".join(moments) + " |", "| --- | " + " | ".join("---" for _ in moments) + " |"]
    lines += [f"| {label} | " + " | ".join(f"{results['parts'][m][label]:.1f}" for m in moments) + " |"
              for label, _ in PARTS]
    lines += ["", "Targets (issue 15):",
              f"- growth at most {GROWTH_TARGET_MIB} MiB per 1,000 containers (after the first {warm_n}): "
              f"**{'met' if growth <= GROWTH_TARGET_MIB else 'missed'}**: {growth:.1f} MiB",
              f"- steady resident memory under {STEADY_TARGET_MIB} MiB: "
              f"**{'met' if steady < STEADY_TARGET_MIB else 'missed'}**: {steady:.1f} MiB at most "
              f"({idle:.1f} MiB idle)"]
    half = next(((n, rss) for n, rss in samples if n >= last_n // 2), None)
    if half and last_n > half[0]:
        lines.append(f"- (for reading the curve: from {half[0]:,} to {last_n:,} containers, "
                     f"{(last - half[1]) / (last_n - half[0]) * 1000:.1f} MiB per 1,000)")
    lines += [END, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main("memory", __doc__, BEGIN, END, run, report, needs_root=True)

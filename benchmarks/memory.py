"""The sensor's resident memory: idle, then through a thousand short-lived containers
(needs root).

    .venv/bin/python benchmarks/memory.py [--quick] [--output benchmarks/RESULTS.md]

`mayfly run` as a user starts it (the built-in rules, alerts to a file sink), pinned to
CPU 1. Its resident set (VmRSS) once started and idle, then after every 100 runc
containers whose entrypoint is a shell running /bin/true and exiting, 2,000 in all
(quick: 200). Over the first thousand the sensor's bounded caches fill (the rule
engine's values, fd descriptions, user names, gone containers within their grace
period); growth is measured over the second thousand, per 1,000 containers, and the
first thousand's is shown beside it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor.records import read_stream  # noqa: E402
from sensor.system import host  # noqa: E402
from sensor.testing.containers import ContainerRig  # noqa: E402
from sensor.testing.running import RunningSensor  # noqa: E402

from report import SENSOR_CPU, machine, main  # noqa: E402

BEGIN, END = "<!-- memory: begin -->", "<!-- memory: end -->"
EVERY = 100
WARM = 1000                 # containers over which the bounded caches fill
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
PARTS = (("compilers (BCC's clang and LLVM, Numba's llvmlite)", host.COMPILER_LIBRARIES),
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
    containers = 200 if quick else 2 * WARM
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
    with open(workdir / "records.msgpack", "rb") as f:
        stopped = [r for r in read_stream(f) if r["kind"] == "sensor" and r["state"] == "stopped"][-1]
    return {"samples": samples, "parts": parts, "recorder": stopped.get("recorder"), "machine": machine(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def report(results: dict, command: str) -> str:
    samples = dict(results["samples"])
    last_n = max(samples)
    warm_n = WARM if last_n >= 2 * WARM else last_n // 2  # quick runs: the second half

    def per_1000(a: int, b: int) -> float:
        return (samples[b] - samples[a]) / (b - a) * 1000
    growth = per_1000(warm_n, last_n)
    idle, steady = samples[0], max(rss for n, rss in samples.items() if n)
    lines = [BEGIN, "## Memory: idle, and through short-lived containers", "",
             f"Command: `{command}`. Machine: {results['machine']}. Generated {results['when']}.", "",
             "`mayfly run` with its defaults (built-in rules, a file sink); runc containers one after another, each a "
             "shell running /bin/true.", "", "| containers | resident MiB |", "| --- | --- |"]
    lines += [f"| {n:,} | {rss:.1f} |" for n, rss in samples.items()]
    moments = list(results["parts"])
    lines += ["", "What holds it (`/proc/PID/smaps`, by mapping), MiB:", "",
              "| part | " + " | ".join(moments) + " |", "| --- | " + " | ".join("---" for _ in moments) + " |"]
    lines += [f"| {label} | " + " | ".join(f"{results['parts'][m][label]:.1f}" for m in moments) + " |"
              for label, _ in PARTS]
    recorder = results.get("recorder")
    recorder_mib = recorder["bytes"] / 2**20 if recorder else 0.0
    if recorder:
        lines += ["", f"Of the heap, the flight recorder (on by default; issue 16) held {recorder_mib:.1f} MiB of "
                      f"{recorder['containers']:,} containers' events at the end (its bound: `--recorder-bytes`, "
                      "64 MiB by default; 0 turns it off)."]
    lines += ["", "Targets (issue 15):",
              f"- growth at most {GROWTH_TARGET_MIB} MiB per 1,000 containers, from {warm_n:,} to {last_n:,}: "
              f"**{'met' if growth <= GROWTH_TARGET_MIB else 'missed'}**: {growth:.1f} MiB"
              + (f" (while the bounded caches fill, from {EVERY} to {warm_n:,}: {per_1000(EVERY, warm_n):.1f} MiB "
                 "per 1,000)" if warm_n > EVERY else ""),
              f"- steady resident memory under {STEADY_TARGET_MIB} MiB: "
              f"**{'met' if steady < STEADY_TARGET_MIB else 'missed'}**: {steady:.1f} MiB at most "
              f"({idle:.1f} MiB idle)" + (f"; {steady - recorder_mib:.1f} MiB without the flight recorder's events"
                                          if recorder else "")]
    lines += [END, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main("memory", __doc__, BEGIN, END, run, report, needs_root=True)

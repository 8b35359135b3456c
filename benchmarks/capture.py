"""Capture on a trigger: how fast a container is frozen and its case sealed, beside the
responder a user would otherwise write, and what holding a process at its last act
costs the processes that are allowed (needs root).

    .venv/bin/python benchmarks/capture.py [--quick] [--output benchmarks/RESULTS.md]

1. Trigger to frozen, and the case. Containers run a shell that holds a secret, reads
   the stand-in for /etc/shadow (the built-in WARNING rule) and stays 300 ms, one after
   another, under `mayfly run` with its defaults: once with the read 0.2 s into the
   container's life, once as it starts. From each case's manifest: the kernel
   timestamp of the triggering event to the cgroup frozen, the capture, and the seal.
   Beside it, in the same run, the alternative: `mayfly run --no-capture` emitting JSON
   alerts, read by a responder that runs `runc pause` on the container named (what a
   Falco + Falcosidekick-style hook does): the event's timestamp to `runc pause` done.
2. The cost to allowed processes (load.c, static, pinned to CPU 0; the sensor to CPU 1):
   - `load openat` opens and closes a file no rule names, in a container and on the
     host: ns per iteration with no sensor, with `mayfly run --no-capture`, and with the
     defaults (capture on: the kernel looks every container open up among the stopping
     needles);
   - `load shadow` opens /etc/shadow over and over in a container, under a rule that
     exempts it by name: each open meets a stopping needle, so the kernel stops the
     process and the sensor continues it once the rules have not matched.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor import records  # noqa: E402
from sensor.testing.containers import RigError, wait_until  # noqa: E402

from container_bench import ContainerBench, percentile  # noqa: E402
from report import WORKLOAD_CPU, machine, main  # noqa: E402

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- capture: begin -->", "<!-- capture: end -->"
# Its trigger comes DELAY into its life: 0.2 s, a container that runs; 0, one that starts.
ATTACKER = "S=topsecret-$((6*7))-value; echo dropped > /tmp/written.txt; sleep {delay}; cat /etc/shadow >/dev/null; " \
           "sleep 0.3; true"
DELAYS = {"running": "0.2", "starting": "0"}
EXEMPT = ("- rule: Shadow Read but by load\n  desc: the allowed process meets the needle\n"
          "  condition: evt.type = openat and fd.name = /etc/shadow and container.id != host and proc.name != load\n"
          "  output: shadow read by %proc.name\n  priority: WARNING\n")


class Bench(ContainerBench):
    def __init__(self, quick: bool):
        super().__init__("capture", quick)
        self.load = self.rig.compile_static("load", (HERE / "load.c").read_text())
        self.containers = 5 if quick else 40

    def attacker(self, delay: str) -> None:
        self.rig.run(["/bin/sh", "-c", ATTACKER.format(delay=delay)], files={"/etc/shadow": str(self.shadow)})

    def mayfly_captures(self, case: str) -> list[dict]:
        output = self.workdir / f"captures-{case}.msgpack"
        sensor = self.sensor(f"captures-{case}", "--output", f"file:{output}")
        try:
            for _ in range(self.containers):
                self.attacker(DELAYS[case])
            wait_until(lambda: self._cases(output) >= self.containers, timeout=60)
        finally:
            sensor.stop()
        with open(output, "rb") as f:
            return [r["timings"] for r in records.read_stream(f) if r["kind"] == "case" and r["state"] == "sealed"]

    @staticmethod
    def _cases(path: Path) -> int:
        try:
            with open(path, "rb") as f:
                return sum(r["kind"] == "case" for r in records.read_stream(f))
        except (OSError, ValueError):
            return 0

    def responder_pauses(self) -> list[float]:
        """`mayfly run --no-capture -o stdout:json` and a responder that runs `runc pause`
        on each alert's container: seconds from the event to paused."""
        sensor = self.sensor("responder", "--no-capture", "--output", "stdout:json")
        latencies: list[float] = []
        paused: set[str] = set()
        done = threading.Event()

        def respond() -> None:
            for line in sensor.proc.stdout:
                record = json.loads(line)
                if record.get("kind") != "alert" or record.get("priority") != "WARNING" \
                        or record["container"]["id"] in paused:
                    continue  # one pause a container, at its first alert
                paused.add(record["container"]["id"])
                subprocess.run(["runc", "pause", record["container"]["id"]], capture_output=True)
                latencies.append(time.time() - record["ts"] / 1e9)
                subprocess.run(["runc", "resume", record["container"]["id"]], capture_output=True)
                if len(latencies) >= self.containers:
                    done.set()
        threading.Thread(target=respond, daemon=True).start()
        try:
            for _ in range(self.containers):
                self.attacker(DELAYS["running"])
            done.wait(60)
        finally:
            sensor.stop()
        return latencies

    def allowed_cost(self) -> dict[str, float]:
        """ns per iteration of `load openat` (container, host) and `load shadow` (container)."""
        iterations = 20_000 if self.quick else 200_000
        shadow_iterations = 200 if self.quick else 2_000
        rules = self.workdir / "exempt.yaml"
        rules.write_text(EXEMPT)
        found: dict[str, float] = {}
        for name, args in (("none", None), ("no-capture", ("--no-capture",)), ("capture", ())):
            sensor = self.sensor(f"cost-{name}", "--output", f"file:{self.workdir / name}.msgpack", *args) \
                if args is not None else None
            try:
                found[f"{name}/openat/container"] = self.run_load("openat", iterations, container=True)
                found[f"{name}/openat/host"] = self.run_load("openat", iterations, container=False)
            finally:
                if sensor:
                    sensor.stop()
            sensor = self.sensor(f"shadow-{name}", "--rules", str(rules), "--output",
                                 f"file:{self.workdir / name}-shadow.msgpack", *args) if args is not None else None
            try:
                found[f"{name}/shadow/container"] = self.run_load("shadow", shadow_iterations, container=True)
            finally:
                if sensor:
                    sensor.stop()
        return found

    def run_load(self, op: str, iterations: int, container: bool) -> float:
        args = [op, str(iterations), "0", str(WORKLOAD_CPU)]
        if not container:
            return float(subprocess.run([self.load, *args], capture_output=True, text=True, check=True)
                         .stdout.split()[0])
        result = self.rig.run(["/load", *args], files={"/load": self.load, "/etc/shadow": str(self.shadow)},
                              timeout=600)
        if result.exit_code:
            raise RigError(f"load {op} in a container exited with {result.exit_code}: {result.stderr[-2000:]}")
        return float(result.stdout.split()[0])

    def run(self) -> dict:
        try:
            print("captures", flush=True)
            timings = {case: self.mayfly_captures(case) for case in DELAYS}
            print("responder", flush=True)
            pauses = self.responder_pauses()
            print("cost to allowed processes", flush=True)
            cost = self.allowed_cost()
        finally:
            self.rig.cleanup()
        return {"timings": timings, "pauses": pauses, "cost": cost, "containers": self.containers}


def report(results: dict, command: str) -> str:
    timings, pauses, cost = results["timings"], results["pauses"], results["cost"]

    def ms(values: list[float]) -> str:
        return (f"{statistics.median(values) * 1e3:,.1f} ms | {percentile(values, 0.99) * 1e3:,.1f} ms"
                if values else "- | -")

    frozen = {case: [t["trigger_to_frozen_s"] for t in found if "trigger_to_frozen_s" in t]
              for case, found in timings.items()}
    every = [t for found in timings.values() for t in found]
    lines = [BEGIN, "## Capture: trigger to frozen, the case, and the cost to allowed processes", "",
             f"Command: `{command}` (as root). Machine: {machine()}.", "",
             f"{results['containers']} containers a case, one after another, each reading the stand-in for "
             "/etc/shadow (the built-in WARNING rule) with a secret in its shell's heap: 0.2 s into its life (a "
             "running container), or as it starts (while the sensor still handles runc's start-up events).", "",
             "| | p50 | p99 |", "| --- | --- | --- |",
             f"| Mayfly: the triggering event to the cgroup frozen, in a running container ({len(frozen['running'])} "
             f"cases) | {ms(frozen['running'])} |",
             f"| Responder: the event to `runc pause` done, from `mayfly run --no-capture -o stdout:json`, in a "
             f"running container ({len(pauses)} alerts) | {ms(pauses)} |",
             f"| Mayfly: the triggering event to the cgroup frozen, as the container starts "
             f"({len(frozen['starting'])} cases) | {ms(frozen['starting'])} |",
             f"| Mayfly: the capture, frozen to captured (memory, executables, files, sockets) | "
             f"{ms([t['capture_s'] for t in every])} |",
             f"| Mayfly: the seal (timeline decoded, written, manifest) | {ms([t['seal_s'] for t in every])} |", ""]
    for case, label in (("running", "in a running container"), ("starting", "as the container starts")):
        if frozen[case]:
            p99 = percentile(frozen[case], 0.99)
            beside = (f", the responder {percentile(pauses, 0.99) * 1e3:,.1f} ms "
                      f"({percentile(pauses, 0.99) / p99:.1f}x)") if case == "running" and pauses else ""
            lines.append(f"- Trigger to frozen {label}, p99: Mayfly {p99 * 1e3:,.1f} ms{beside}; the goal is under "
                         f"10 ms: **{'met' if p99 < 0.010 else 'missed'}**.")
    lines.append("")
    lines += ["The cost to allowed processes, ns per iteration (an open and a close):", "",
              "| workload | no sensor | `--no-capture` | defaults (capture on) | capture on / off |",
              "| --- | --- | --- | --- | --- |"]
    for key, label in (("openat/container", "`load openat` in a container (no needle)"),
                       ("openat/host", "`load openat` on the host (no needle)"),
                       ("shadow/container", "`load shadow` in a container: a stopping needle, exempted by the rule")):
        none, off, on = (cost[f"{s}/{key}"] for s in ("none", "no-capture", "capture"))
        lines.append(f"| {label} | {none:,.0f} | {off:,.0f} | {on:,.0f} | {on / off:.2f}x |")
    lines += ["", "A stopping needle costs an allowed container open one more trie lookup in the kernel; an "
              "allowed process that meets one waits, stopped, until the sensor has seen its event and no rule "
              "matched (the last row).", END, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main("capture", __doc__, BEGIN, END, lambda quick: Bench(quick).run(), report, needs_root=True)

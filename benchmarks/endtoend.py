"""End-to-end cost and capacity, side by side with the tools a user would pick instead
(needs root).

    .venv/bin/python benchmarks/endtoend.py [--quick] [--output benchmarks/RESULTS.md]

Sensors, each a process of its own, as a user runs it:
- none: nothing attached;
- Mayfly with nothing of interest (an empty rule file: lifecycle events only);
- Mayfly emitting every event it knows to a file sink, no rules;
- Mayfly's full pipeline as `mayfly run` starts by default: the built-in rules, their
  alerts to a file sink. The rules are container-scoped, so a host workload's cgroup
  is dropped in the kernel by the policy map: on the host this is the kernel-filtered
  mode, in a container every event the rules need is captured and matched;
- the BCC peer (bcc_peer.py): a perf-buffer callback that decodes each event and
  applies the built-in rules in plain Python, covering the rules' syscall types;
- the bpftrace peer: a script covering the same syscall types that prints each event.

Workloads (load.c, static): a getppid loop, an openat/close loop, an exec storm (fork,
exec /bin/true, wait), a TCP connect/accept storm on loopback; each on the host and
in a runc container, with the workload and the sensor on different CPUs and on the
same one. Then redis-server (in a container) under redis-benchmark. Then each
sensor's lossless maximum rate on a paced openat loop in a container: the offered rate
doubles until loss, then bisects. Rounds interleave the sensors, so that the VM's
drift touches them alike; each figure is a median.

Metrics: workload ns per operation; the sensor's CPU time per operation (the
scheduler's per-thread counts in /proc); its BPF programs' ns per operation
(kernel.bpf_stats_enabled, read from /proc/PID/fdinfo); events delivered and lost per
container; where the full pipeline's time goes when it loses events (py-spy). Plots
go to results/ beside the output file (benchmarks/results/ by default).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor import records  # noqa: E402
from sensor.kernel import syscalls  # noqa: E402
from sensor.testing.containers import ContainerRig, RigError, wait_until  # noqa: E402
from sensor.testing.running import RunningSensor  # noqa: E402

import bcc_peer  # noqa: E402
from report import SENSOR_CPU, WORKLOAD_CPU, machine, main  # noqa: E402
from ringbuf import prog_stats  # noqa: E402

HERE = Path(__file__).resolve().parent
PLACEMENTS = {"apart": WORKLOAD_CPU, "same CPU": SENSOR_CPU}  # where the workload runs
WORKLOADS = {"getppid": 1_000_000, "openat": 100_000, "exec": 1_000, "tcp": 10_000}  # iterations (quick: /20)
BEGIN, END = "<!-- endtoend: begin -->", "<!-- endtoend: end -->"
REDIS_PORT = 16379
BEFORE_ISSUE_15 = 112_000  # the full pipeline's lossless iterations/s the issue measured
# Published figures, not measured here: (tool, figure, where it is from). The figures are
# those the project's benchmark issue quotes; the original publications could not be
# re-read from the machines these benchmarks were written on.
PUBLISHED = [
    ("Falco (modern_bpf driver)", "about 194 ns per syscall enter and 205 ns per exit, in production",
     "Falco maintainers' published driver overhead measurements (falco.org, Falco performance docs)"),
    ("Falco", "about 150-250K syscalls/s per CPU without drops",
     "falco.org/docs/troubleshooting/dropping and maintainers' capacity figures"),
    ("Tetragon", "+10.6% on a kernel build with its policies loaded", "Tetragon's published overhead benchmark"),
    ("Tracee", "about 1 us per event to evaluate signatures", "Tracee's published performance figures"),
]


@dataclass(frozen=True)
class Sensor:
    name: str
    label: str
    kind: str                   # "none", "mayfly", "bcc" or "bpftrace"
    args: tuple[str, ...] = ()  # of `mayfly run`; NO_RULES stands for an empty rule file


NO_RULES = "{no rules}"
SENSORS = [
    Sensor("none", "nothing attached", "none"),
    Sensor("no_interest", "Mayfly, nothing of interest", "mayfly", ("--rules", NO_RULES)),
    Sensor("emitting", "Mayfly, emitting events", "mayfly", ("--rules", NO_RULES, "--emit-events")),
    # The built-in rules are container-scoped: a host workload's cgroup is dropped in the kernel.
    Sensor("full", "Mayfly, full pipeline (host: kernel-filtered)", "mayfly"),
    Sensor("bcc", "BCC peer (Python callback, rules in Python)", "bcc"),
    Sensor("bpftrace", "bpftrace peer (prints each event)", "bpftrace"),
]
# Under redis only: the full pipeline without the two parts that run on every syscall or
# packet whatever the rules say, to show what turning them off buys.
LEAN = Sensor("lean", "Mayfly, full pipeline, --no-flows --no-count-syscalls", "mayfly",
              ("--no-flows", "--no-count-syscalls"))
# In the lossless search only: what the flight recorder (on by default) costs.
NO_RECORDER = Sensor("no_recorder", "Mayfly, full pipeline, --recorder-bytes 0 (no flight recorder)", "mayfly",
                     ("--recorder-bytes", "0"))
LABELS = {s.name: s.label for s in (*SENSORS, LEAN, NO_RECORDER)}
BUSY_LOOP = "busy_loop"  # redis's control: nothing attached, a busy loop on the sensor's CPU


@dataclass
class Outcome:
    ns_per_op: float
    sensor_cpu_ns: float      # sensor user+sys per operation
    container: str | None     # the workload's container id
    cgroup_id: int | None     # ...and its cgroup's
    iterations: int
    delivered: int | None = None
    lost: int | None = None


@dataclass
class Session:
    """A sensor running: its process, and what it said when stopped."""
    sensor: Sensor
    pid: int | None = None
    stop: object = None
    summary: dict = field(default_factory=dict)


def cpu_ns(pid: int | None) -> int:
    """CPU time a process's threads have had so far, in ns (0 without one): the
    scheduler's own count, finer than /proc/PID/stat's clock ticks."""
    if pid is None:
        return 0
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total


def bpf_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs a process holds (kept while
    kernel.bpf_stats_enabled is 1)."""
    time_ns = runs = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-prog":
                program_ns, program_runs = prog_stats(fd, pid)
                time_ns, runs = time_ns + program_ns, runs + program_runs
        except FileNotFoundError:
            continue  # an fd closed meanwhile
    return time_ns, runs


def settle(pid: int | None, idle_share: float = 0.05, window_s: float = 0.5, timeout_s: float = 60.0) -> None:
    """Wait until the sensor uses under `idle_share` of a CPU. On this VM its two vCPUs
    share a physical core: a bare busy loop on the sensor's CPU alone makes redis on the
    other 0.75x (the `busy loop` row of the redis table), so a sensor still working off
    the previous workload's backlog would be charged to redis's own path."""
    if pid is None:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = cpu_ns(pid)
        time.sleep(window_s)
        if cpu_ns(pid) - before < idle_share * window_s * 1e9:
            return
    raise RigError(f"the sensor (pid {pid}) was still busy after {timeout_s:.0f} s")


def bpftrace_script(types: frozenset[str]) -> str:
    """The bpftrace peer: each covered syscall's caller, arguments, first path (read at
    entry) and result, printed as a line."""
    table = syscalls.table()
    path_arg = bcc_peer.coverage(table, types)
    wanted = "\n".join(f"    @want[{nr}] = {index + 1};" for nr, index in sorted(path_arg.items()))
    reads = " else ".join(f"if ($i == {i + 1}) {{ @path[tid] = str(args->args[{i}]); }}" for i in range(6))
    return f"""BEGIN
{{
{wanted}
    printf("ready\\n");
}}

tracepoint:raw_syscalls:sys_enter /@want[args->id]/
{{
    $i = @want[args->id];
    @arg0[tid] = args->args[0];
    @arg1[tid] = args->args[1];
    {reads} else {{ @path[tid] = ""; }}
}}

tracepoint:raw_syscalls:sys_exit /@want[args->id]/
{{
    printf("%d %d %d %d %d %d %d %d %s %s %d\\n", cgroup, pid, tid, uid, gid, args->id, @arg0[tid], @arg1[tid],
           comm, @path[tid], args->ret);
    delete(@arg0[tid]);
    delete(@arg1[tid]);
    delete(@path[tid]);
}}

END
{{
    clear(@want);
    clear(@arg0);
    clear(@arg1);
    clear(@path);
}}
"""


class Bench:
    def __init__(self, quick: bool):
        self.quick = quick
        self.workdir = Path(tempfile.mkdtemp(prefix="mayfly-endtoend-"))
        self.rig = ContainerRig()
        self.load = self.rig.compile_static("load", (HERE / "load.c").read_text())  # static: runs in containers too
        self.empty_rules = self.workdir / "no-rules.yaml"
        self.empty_rules.write_text("[]\n")
        self.types = self.coverage()
        self.iterations = {w: max(n // (20 if quick else 1), 10) for w, n in WORKLOADS.items()}
        self.rounds = 1 if quick else 3

    # -- sensors -------------------------------------------------------------------------

    def coverage(self) -> frozenset[str]:
        """The syscall types the peers cover: what Mayfly's full pipeline has the kernel
        capture (its `ready` record says), the types the built-in rules can match and the
        fd syscalls it keeps fd tables from, since the rules read fd fields."""
        session = self.start(next(s for s in SENSORS if s.name == "full"))
        ready = next(r for r in session.stop()["records"] if r["kind"] == "sensor" and r["state"] == "ready")
        return frozenset(ready["captured"])

    def start(self, sensor: Sensor, extra: tuple[str, ...] = ()) -> Session:
        session = Session(sensor)
        directory = self.workdir / f"{sensor.name}-{time.monotonic_ns()}"
        directory.mkdir()
        if sensor.kind == "mayfly":
            output = directory / "records.msgpack"
            args = [str(self.empty_rules) if a == NO_RULES else a for a in sensor.args]
            running = RunningSensor(directory, *args, *extra, "--output", f"file:{output}",
                                    "--report-interval", "3600", cpu=SENSOR_CPU)
            session.pid = running.proc.pid

            def stop():
                running.stop()
                kept = []  # what the harness reads: not the events, which can fill gigabytes
                rotated = sorted(directory.glob("records.msgpack.*"), key=lambda p: -int(p.suffix[1:]))  # oldest first
                for path in [*rotated, output]:
                    with open(path, "rb") as f:
                        kept += [r for r in records.read_stream(f) if r["kind"] in ("container", "sensor", "lost")]
                return {"records": kept}
            session.stop = stop
        elif sensor.kind in ("bcc", "bpftrace"):
            session.pid, session.stop = self._start_peer(sensor.kind, directory)
        return session

    def _start_peer(self, kind: str, directory: Path):
        out = open(directory / "stdout", "w+")
        err = open(directory / "stderr", "w+")
        if kind == "bcc":
            command = [sys.executable, str(HERE / "bcc_peer.py"), "--types", ",".join(sorted(self.types))]
        else:
            script = directory / "peer.bt"
            script.write_text(bpftrace_script(self.types))
            command = ["bpftrace", str(script)]
        # bpftrace 0.17 cannot keep a longer string and print it within its 512-byte stack
        env = {**os.environ, "BPFTRACE_STRLEN": "64", "BPFTRACE_PERF_RB_PAGES": "512"}
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env,
                                preexec_fn=lambda: os.sched_setaffinity(0, {SENSOR_CPU}))

        def ready():
            if proc.poll() is not None:
                raise RigError(f"{kind} peer exited: {(directory / 'stderr').read_text()[-2000:]}")
            with open(directory / "stdout") as f:
                return re.search(r"^(ready|\{\"ready\": true\})$", f.read(4096), re.M)
        wait_until(ready, timeout=120, interval=0.1)

        def stop():
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
            out.close()
            err.close()
            text = (directory / "stdout").read_text(errors="replace")
            lost = sum(int(n) for n in re.findall(r"Lost (\d+) events", text + (directory / "stderr").read_text()))
            if kind == "bcc":
                summary = json.loads(text.strip().splitlines()[-1])
                return {"by_cgroup": {int(k): v for k, v in summary["by_cgroup"].items()}, "lost": summary["lost"]}
            by_cgroup: dict[int, int] = {}
            for line in text.splitlines():
                cgroup = line.split(" ", 1)[0]  # each event's line starts with its cgroup id
                if cgroup.isdigit():
                    by_cgroup[int(cgroup)] = by_cgroup.get(int(cgroup), 0) + 1
            return {"by_cgroup": by_cgroup, "lost": lost}
        return proc.pid, stop

    # -- workloads -----------------------------------------------------------------------

    def workload(self, session: Session, name: str, where: str, cpu: int, iterations: int,
                 rate: float = 0) -> Outcome:
        args = [name, str(iterations), str(rate), str(cpu)]
        before = cpu_ns(session.pid)
        if where == "host":
            proc = subprocess.run([self.load, *args], capture_output=True, text=True, check=True)
            stdout, container_id, cgroup_id = proc.stdout, None, None
        else:
            container = self.rig.create(["/load", *args], files={"/load": self.load})
            try:
                cgroup_id = container.cgroup_id
                container.start()
                code = container.wait(timeout=600)
                stdout, stderr = container.output()
                if code:
                    raise RigError(f"{name} in a container exited with {code}: {stderr[-2000:]}")
                container_id = container.id
            finally:
                container.delete()
        ns_per_op, _ = stdout.split()
        used = cpu_ns(session.pid) - before
        return Outcome(float(ns_per_op), used / iterations, container_id, cgroup_id, iterations)

    def account(self, session: Session, outcomes: list[Outcome]) -> None:
        """Fill in what each containerized run delivered and lost, from what the sensor
        said: Mayfly's container exit records, the peers' events by pid."""
        if session.sensor.kind == "mayfly":
            exits = {r["container"]["id"]: r for r in session.summary["records"]
                     if r["kind"] == "container" and r.get("state") == "exit"}
            for o in outcomes:
                record = exits.get(o.container)
                if record is not None:
                    o.delivered, o.lost = record["events"], sum(record["lost"].values())
        elif session.sensor.kind in ("bcc", "bpftrace"):
            for o in outcomes:
                if o.container:
                    o.delivered = session.summary["by_cgroup"].get(o.cgroup_id, 0)

    # -- redis ---------------------------------------------------------------------------

    def redis(self, requests: int, cpu: int, sensor_pid: int | None = None) -> float:
        """requests/s of redis-benchmark (SET and GET) against redis-server in a container
        that shares the host's network, both on `cpu`. The sensor first works off what
        earlier workloads left it (see settle)."""
        settle(sensor_pid)
        server = shutil.which("redis-server")
        libraries = re.findall(r"=> (/\S+)", subprocess.run(["ldd", server], capture_output=True, text=True).stdout)
        files = {"/usr/bin/redis-server": server, **{lib: lib for lib in libraries}}
        container = self.rig.create(["/usr/bin/redis-server", "--port", str(REDIS_PORT), "--save", "",
                                     "--appendonly", "no", "--bind", "127.0.0.1"], host_network=True, files=files)
        try:
            container.start()
            wait_until(lambda: subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True,
                                              text=True).stdout.strip() == "PONG", timeout=30, interval=0.1)
            os.sched_setaffinity(container.pid, {cpu})
            run = subprocess.run(["redis-benchmark", "-p", str(REDIS_PORT), "-n", str(requests), "-t", "set,get",
                                  "-c", "20", "-q", "--csv"], capture_output=True, text=True, check=True,
                                 preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
            rates = [float(row.split(",")[1].strip('"')) for row in run.stdout.splitlines()[1:] if row.strip()]
            return statistics.mean(rates)
        finally:
            container.delete()

    def redis_only(self, sensor: Sensor, requests: int, redis: dict, bpf: dict | None) -> None:
        session = self.start(sensor)
        try:
            redis.setdefault(sensor.name, []).append(self.redis(requests, WORKLOAD_CPU, session.pid))
            if bpf is not None:
                bpf[sensor.name, "redis"] = self.redis_bpf(session, requests)
        finally:
            session.stop()
        print(f"  {sensor.name}: redis {redis[sensor.name][-1]:,.0f}/s", flush=True)

    def redis_bpf(self, session: Session, requests: int) -> tuple[float, float] | None:
        """The sensor's BPF programs per redis request (a SET or a GET)."""
        def run() -> int:
            self.redis(requests, WORKLOAD_CPU, session.pid)
            return 2 * requests  # a SET and a GET each
        return self.bpf_per_op(session, run)

    def redis_beside_busy_loop(self, requests: int) -> float:
        """redis as above, with nothing attached but a bare busy loop on the sensor's CPU."""
        loop = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                preexec_fn=lambda: os.sched_setaffinity(0, {SENSOR_CPU}))
        try:
            return self.redis(requests, WORKLOAD_CPU)
        finally:
            loop.kill()
            loop.wait()

    # -- capacity ------------------------------------------------------------------------

    def lossless_max(self, sensor: Sensor) -> list[dict]:
        """A paced openat loop in a container, its rate doubled until the sensor loses
        events, then bisected. Mayfly runs with its defaults: its work-conserving token
        buckets hold a cgroup back only once the ring is under pressure, that is once
        the sensor falls behind."""
        seconds = 0.5 if self.quick else 2.0
        steps, rate, good, bad = [], 25_000, 0, None

        def step(rate: int) -> dict:
            session = self.start(sensor)
            try:
                outcome = self.workload(session, "openat", "container", WORKLOAD_CPU, int(rate * seconds), rate)
            finally:
                session.summary = session.stop()
            self.account(session, [outcome])
            achieved = 1e9 / outcome.ns_per_op
            if sensor.kind == "mayfly":
                lossless = outcome.lost == 0 and outcome.delivered is not None
            else:
                # nothing counted lost, and each iteration's openat and close seen
                lossless = session.summary["lost"] == 0 and outcome.delivered >= 2 * outcome.iterations
                outcome.lost = session.summary["lost"]
            result = {"sensor": sensor.name, "offered": rate, "achieved": achieved, "iterations": outcome.iterations,
                      "delivered": outcome.delivered, "lost": outcome.lost, "lossless": lossless,
                      "sensor_cpu_ns": outcome.sensor_cpu_ns}
            print(f"  {sensor.name:>8} offered {rate:>9,}/s achieved {achieved:>9,.0f}/s delivered "
                  f"{outcome.delivered} lost {outcome.lost}", flush=True)
            return result

        while bad is None:  # up, doubling, until loss
            steps.append(step(rate))
            if not steps[-1]["lossless"]:
                bad = rate
            elif steps[-1]["achieved"] < 0.8 * rate:
                return steps  # the workload can go no faster
            else:
                good, rate = rate, rate * 2
        while good == 0 and bad > 1_000:  # lossy from the start: down, halving
            rate = bad // 2
            steps.append(step(rate))
            good, bad = (rate, bad) if steps[-1]["lossless"] else (0, rate)
        for _ in range(1 if self.quick else 3):  # then between the two
            if good == 0:
                break
            rate = (good + bad) // 2
            steps.append(step(rate))
            good, bad = (rate, bad) if steps[-1]["lossless"] else (good, rate)
        return steps

    # -- where the time goes ------------------------------------------------------------

    def profile(self, rate: int) -> dict[str, float]:
        """py-spy's samples of the full pipeline's process while a container's paced
        openat loop offers `rate` operations/s: per function of Mayfly's (and of what it
        calls), the share of busy samples in which it was on the stack."""
        session = self.start(next(s for s in SENSORS if s.name == "full"))
        out = self.workdir / "profile.txt"
        seconds = 1 if self.quick else 4
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(session.pid),
                                "--duration", str(seconds + 1), "--rate", "250", "--format", "raw", "--output",
                                str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # py-spy attached
            self.workload(session, "openat", "container", WORKLOAD_CPU, rate * seconds, rate)
            if spy.wait(timeout=60):
                raise RigError(f"py-spy failed: {spy.stderr.read().decode()[-2000:]}")
        finally:
            session.stop()
        inclusive: dict[str, int] = {}
        busy = 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [f for f in stack.split(";") if "sensor/" in f or "numba" in f or "numpy" in f]
            if not frames or "Condition.wait" in stack or "RingReader.wait" in stack:
                continue  # idle, or the identity watcher waiting
            busy += int(count)
            for name in {f.split(" (")[0] for f in frames}:
                inclusive[name] = inclusive.get(name, 0) + int(count)
        return {name: n / busy for name, n in sorted(inclusive.items(), key=lambda x: -x[1])[:15]} if busy else {}

    # -- the kernel's view ---------------------------------------------------------------

    def bpf_per_op(self, session: Session, run) -> tuple[float, float] | None:
        """ns the sensor's BPF programs run, and how many times they run, per operation of
        `run()` (which returns how many operations it made), by the kernel's bpf_stats, in
        a run of its own: keeping the stats costs time."""
        if session.pid is None:
            return None
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        try:
            before = bpf_stats(session.pid)
            operations = run()
            after = bpf_stats(session.pid)
            return (after[0] - before[0]) / operations, (after[1] - before[1]) / operations
        finally:
            with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
                f.write("0")

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> dict:
        os.sched_setaffinity(0, {SENSOR_CPU})
        runs: dict[tuple, list[Outcome]] = {}
        redis: dict[str, list[float]] = {}
        bpf: dict[tuple, float] = {}
        requests = 5_000 if self.quick else 100_000
        try:
            for round_ in range(self.rounds):
                print(f"round {round_ + 1} of {self.rounds}", flush=True)
                for sensor in SENSORS:
                    session = self.start(sensor)
                    outcomes = []
                    try:
                        for name in WORKLOADS:
                            for where in ("host", "container"):
                                for placement, cpu in PLACEMENTS.items():
                                    outcome = self.workload(session, name, where, cpu, self.iterations[name])
                                    runs.setdefault((sensor.name, name, where, placement), []).append(outcome)
                                    outcomes.append(outcome)
                        redis.setdefault(sensor.name, []).append(self.redis(requests, WORKLOAD_CPU, session.pid))
                        if sensor.kind == "none":  # the control for what the sensor's CPU use costs redis
                            redis.setdefault(BUSY_LOOP, []).append(self.redis_beside_busy_loop(requests))
                        if round_ == 0:  # host workloads, apart; redis per request (a SET or a GET)
                            for name in WORKLOADS:
                                bpf[sensor.name, name] = self.bpf_per_op(session, lambda: self.workload(
                                    session, name, "host", WORKLOAD_CPU, self.iterations[name]).iterations)

                            bpf[sensor.name, "redis"] = self.redis_bpf(session, requests)
                    finally:
                        session.summary = session.stop() if session.stop else {}
                    self.account(session, outcomes)
                    print(f"  {sensor.name}: " + ", ".join(
                        f"{k[1]}/{k[2]}/{k[3]} {runs[k][-1].ns_per_op:,.0f} ns" for k in runs
                        if k[0] == sensor.name), flush=True)
                self.redis_only(LEAN, requests, redis, bpf if round_ == 0 else None)
            print("lossless rates", flush=True)
            capacity = {s.name: self.lossless_max(s) for s in (*SENSORS, NO_RECORDER)
                        if s.name in ("full", NO_RECORDER.name, "bcc", "bpftrace")}
            lossy = min((s["offered"] for s in capacity["full"] if not s["lossless"]), default=None)
            print(f"profile at {lossy}/s", flush=True)
            profile = {"rate": lossy, "shares": self.profile(lossy) if lossy else {}}
        finally:
            self.rig.cleanup()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return {"runs": runs, "redis": redis, "bpf": bpf, "capacity": capacity, "profile": profile,
                "rounds": self.rounds,
                "iterations": self.iterations, "requests": requests, "types": sorted(self.types),
                "versions": versions()}


def recorder_cost(capacity: dict[str, list[dict]]) -> str:
    """The flight recorder's line: lossless rates with and without it, and the sensor's
    CPU per iteration at the highest rate both were lossless at."""
    on, off = capacity["full"], capacity[NO_RECORDER.name]
    common = sorted({s["offered"] for s in on if s["lossless"]} & {s["offered"] for s in off if s["lossless"]})
    cpu = ""
    if common:
        at = common[-1]
        with_it, without = (next(s["sensor_cpu_ns"] for s in steps if s["offered"] == at) for steps in (on, off))
        cpu = (f"; the sensor's CPU per iteration at {at:,}/s offered: {with_it:,.0f} ns with it, "
               f"{without:,.0f} ns without")
    return (f"- The flight recorder (on by default; issue 16): lossless at **{lossless(on):,.0f}** iterations/s with "
            f"it, {lossless(off):,.0f} without (`--recorder-bytes 0`){cpu}.")


def versions() -> dict[str, str]:
    def first_line(*command: str) -> str:
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError:
            return "not installed"
        return (result.stdout or result.stderr).strip().splitlines()[0]
    import bcc
    return {"bpftrace": first_line("bpftrace", "--version"), "redis": first_line("redis-server", "--version"),
            "runc": first_line("runc", "--version"), "bcc": getattr(bcc, "__version__", "unknown")}


def lossless(steps: list[dict]) -> float:
    return max((s["achieved"] for s in steps if s["lossless"]), default=0.0)


def median(outcomes: list[Outcome], attribute: str) -> float | None:
    values = [getattr(o, attribute) for o in outcomes if getattr(o, attribute) is not None]
    return statistics.median(values) if values else None


def plot(results: dict) -> list[str]:
    """PNG plots in results/ beside RESULTS.md; their paths, relative to it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = Path(results["output"]).parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]

    def bars(ax, labels: list[str], values: list[float], title: str) -> None:
        ax.barh(labels, values)
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)

    charts = {"workload-cost.png": plt.subplots(1, len(WORKLOADS), figsize=(4 * len(WORKLOADS), 4)),
              "lossless-rate.png": plt.subplots(figsize=(6, 3)),
              "redis.png": plt.subplots(figsize=(6, 3))}
    for ax, name in zip(charts["workload-cost.png"][1], WORKLOADS):
        bars(ax, [s.label.replace(", ", "\n") for s in SENSORS],
             [median(runs[s.name, name, "container", "apart"], "ns_per_op") / 1000 for s in SENSORS],
             f"{name} in a container (us per operation)")
    capacity = results["capacity"]
    bars(charts["lossless-rate.png"][1], [LABELS[n] for n in capacity], [lossless(capacity[n]) for n in capacity],
         "lossless openat/close iterations/s (paced loop in a container)")
    bars(charts["redis.png"][1], [s.label for s in SENSORS],
         [statistics.median(results["redis"][s.name]) for s in SENSORS], "redis-benchmark requests/s (SET and GET)")
    for file, (fig, _) in charts.items():
        fig.tight_layout()
        fig.savefig(plots / file, dpi=90)
        plt.close(fig)
    return [f"results/{file}" for file in charts]


def report(results: dict, command: str) -> str:
    runs, capacity = results["runs"], results["capacity"]
    names = [s.name for s in SENSORS]
    plots = plot(results)

    def cost(sensor: str, *key: str) -> float:
        return median(runs[(sensor, *key)], "ns_per_op")

    lines = [
        BEGIN,
        "## End to end: workloads, sensors and peers",
        "",
        f"Command: `{command}` (as root). Machine: {machine()}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ". "
        f"Sensors on CPU {SENSOR_CPU}; workloads on CPU {WORKLOAD_CPU} (apart) or on CPU {SENSOR_CPU} (same CPU). "
        f"Medians of {results['rounds']} round(s) that run every sensor once; iterations per run: "
        + ", ".join(f"{w} {n:,}" for w, n in results["iterations"].items()) + ". "
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "The peers cover the syscall types Mayfly's full pipeline captures (" + ", ".join(results["types"]) + "): "
        "those the built-in rules can match, and the fd syscalls Mayfly keeps fd tables from, since the rules "
        "read fd fields. Each event carries its caller, arguments, first path (bpftrace's cut at 64 bytes, the "
        "most its 512-byte stack allows; the others' at 256 or more) and result. Mayfly captures close, dup and "
        "fcntl only for the fds it tracks; the peers keep no fd tables in the kernel and capture every one. The "
        "BCC peer (`benchmarks/bcc_peer.py`) applies every built-in rule as a plain Python predicate over each "
        "decoded event (`benchmarks/peer_rules.py`, with container identity by cgroup id), and raises the alerts "
        "Mayfly raises on every built-in rule's attack and benign neighbour (`tests/e2e/test_peer_differential.py`; "
        "what it does not cover is in `peer_rules.py`). The bpftrace peer prints each event and applies no rule: "
        "it raises no alerts, and stands for the cost of capture alone. "
        "Mayfly's emitting mode emits every event it knows, a superset. The full pipeline is Mayfly as it "
        "starts by default (built-in rules, alerts to a file sink); with the workload on the host it is the "
        "kernel-filtered mode, since the built-in rules are container-scoped and the host's cgroups are dropped "
        "in the kernel.",
        "",
        "### Workload cost: ns per operation (and x nothing attached)",
        "",
        "| workload | where | CPUs | " + " | ".join(LABELS[n] for n in names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for name in WORKLOADS:
        for where in ("host", "container"):
            for placement in PLACEMENTS:
                base = cost("none", name, where, placement)
                cells = [f"{cost(n, name, where, placement):,.0f} ({cost(n, name, where, placement) / base:.2f}x)"
                         for n in names]
                lines.append(f"| {name} | {where} | {placement} | " + " | ".join(cells) + " |")
    lines += ["", "### Sensor CPU time per operation, ns", "",
              "| workload | where | CPUs | " + " | ".join(LABELS[n] for n in names[1:]) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in names[1:]) + " |"]
    for name in WORKLOADS:
        for where in ("host", "container"):
            for placement in PLACEMENTS:
                cells = [f"{median(runs[n, name, where, placement], 'sensor_cpu_ns'):,.0f}" for n in names[1:]]
                lines.append(f"| {name} | {where} | {placement} | " + " | ".join(cells) + " |")
    lines += ["", "### The sensors' BPF programs per operation: ns (and program runs), by the kernel's `bpf_stats`; "
              "host workload, apart", "",
              "| workload | " + " | ".join(LABELS[n] for n in names[1:]) + " |",
              "| --- | " + " | ".join("---" for _ in names[1:]) + " |"]
    for name in (*WORKLOADS, "redis"):
        label = "redis (per request, server in a container)" if name == "redis" else name
        lines.append(f"| {label} | " + " | ".join(f"{results['bpf'][n, name][0]:,.0f} ({results['bpf'][n, name][1]:.1f})"
                                                for n in names[1:]) + " |")
    lines += ["", "### Events delivered and lost per container run (apart; Mayfly: the container's exit "
              "record, its events and what its kernel side counted lost; peers: events of its cgroup)", "",
              "| workload | operations | " + " | ".join(LABELS[n] for n in names[1:]) + " |",
              "| --- | --- | " + " | ".join("---" for _ in names[1:]) + " |"]
    for name in WORKLOADS:
        last = {n: runs[n, name, "container", "apart"][-1] for n in names[1:]}
        cells = [f"{o.delivered:,}" + (f" (lost {o.lost:,})" if o.lost else "") if o.delivered is not None
                 else "no record" for o in last.values()]
        lines.append(f"| {name} | {results['iterations'][name]:,} | " + " | ".join(cells) + " |")
    if any(o.delivered is None for key, outcomes in runs.items() if key[0] != "none" and key[2] == "container"
           for o in outcomes):
        lines += ["", "No record: Mayfly wrote no exit record for that container: its cgroup's creation or "
                  "removal was lost with both the ring buffer and the spill ring kept for lifecycle events full "
                  "(counted in the sensor's `lost` records and its `stopped` totals)."]

    redis = {n: statistics.median(v) for n, v in results["redis"].items()}
    lines += ["", "### redis-server in a container under redis-benchmark (SET and GET, 20 clients, "
              f"{results['requests']:,} requests each; both on CPU {WORKLOAD_CPU})", "",
              "| sensor | requests/s | x nothing attached |", "| --- | --- | --- |"]
    for n in [*names, LEAN.name]:
        lines.append(f"| {LABELS[n]} | {redis[n]:,.0f} | {redis[n] / redis['none']:.2f}x |")
    if BUSY_LOOP in redis:
        lines += [f"| control: nothing attached, a bare busy loop on CPU {SENSOR_CPU} | {redis[BUSY_LOOP]:,.0f} | "
                  f"{redis[BUSY_LOOP] / redis['none']:.2f}x |", "",
                  f"Each sensor run starts once the sensor is idle (under 5% of a CPU): this VM's two vCPUs share a "
                  f"physical core, so whatever the sensor does on CPU {SENSOR_CPU} slows redis on CPU "
                  f"{WORKLOAD_CPU}, as the control row shows."]

    rates = {n: lossless(steps) for n, steps in capacity.items()}
    # A search that met no loss stopped because the workload could go no faster.
    producer = {n: all(s["lossless"] for s in steps) for n, steps in capacity.items()}
    lines += ["", "### Lossless maximum rate: a paced openat loop in a container, doubled until loss, then bisected",
              "", "Mayfly's full pipeline runs here with its defaults (its token buckets are work-conserving: they hold "
              "a container back only once the sensor falls behind). Lossless: for Mayfly, the container's exit record "
              "counts nothing lost; for a peer, nothing counted lost and every iteration's openat and close "
              "seen.", "", "| sensor | lossless iterations/s (an openat and a close each) | bounded by |",
              "| --- | --- | --- |"]
    for n, rate in rates.items():
        bound = "the workload (it could go no faster under this sensor)" if producer[n] else "the sensor"
        lines.append(f"| {LABELS[n]} | {rate:,.0f} | {bound} |")
    lines += ["", "| sensor | offered/s | achieved/s | iterations | delivered | lost | lossless | sensor CPU ns/op |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for steps in capacity.values():
        for s in steps:
            lines.append(f"| {s['sensor']} | {s['offered']:,} | {s['achieved']:,.0f} | {s['iterations']:,} | "
                         f"{s['delivered']} | {s['lost']} | {'yes' if s['lossless'] else 'no'} | "
                         f"{s['sensor_cpu_ns']:,.0f} |")

    profile = results["profile"]
    if profile["shares"]:
        lines += ["", f"### Where the full pipeline's time goes when it loses events ({profile['rate']:,} openat/s offered)",
                  "", "py-spy's samples of the sensor process (its busy ones: waiting is left out), by function, "
                  "with what it calls:", "", "| function | share of busy samples |", "| --- | --- |"]
        lines += [f"| `{name}` | {share:.0%} |" for name, share in profile["shares"].items()]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b else "unbounded (the peer lost events at every rate)"
    bcc_ratio = rates["full"] / rates["bcc"] if rates["bcc"] else float("inf")
    bpftrace_ratio = rates["full"] / rates["bpftrace"] if rates["bpftrace"] else float("inf")
    redis_ratio = redis["full"] / redis["none"]
    before = BEFORE_ISSUE_15

    def verdict(value: float, target: float) -> str:
        return "met" if value >= target else f"missed by {1 - value / target:.0%}"
    bounded = " (Mayfly's figure is the workload's limit, not its own)" if producer["full"] else ""
    lines += ["", "### Targets (issue 15; ratios from this run)", "",
              f"- Lossless maximum rate of the full pipeline: **{rates['full']:,.0f}** iterations/s, "
              f"{rates['full'] / before:.2f}x the {before:,} before issue 15 (target >= 1.4x: "
              f"{verdict(rates['full'] / before, 1.4)}){bounded}.",
              f"- Against the BCC peer: **{ratio(rates['full'], rates['bcc'])}** (target >= 15x: "
              f"{verdict(bcc_ratio, 15)}); against bpftrace: **{ratio(rates['full'], rates['bpftrace'])}** "
              f"(target >= 4x: {verdict(bpftrace_ratio, 4)}).",
              f"- redis-benchmark with the full pipeline attached: **{redis_ratio:.2f}x** the requests/s of nothing "
              f"attached (target >= 0.9x: {verdict(redis_ratio, 0.9)}). Each request took "
              f"{1e9 / redis['full'] - 1e9 / redis['none']:,.0f} ns more; the kernel counts "
              f"{results['bpf']['full', 'redis'][0]:,.0f} ns of the full pipeline's BPF programs per request "
              f"({results['bpf']['full', 'redis'][1]:.1f} runs: every syscall's enter, and each packet's flow "
              "accounting), beside the tracing path that any attached sys_enter program puts every syscall on "
              f"(with nothing of interest: {redis['no_interest'] / redis['none']:.2f}x). With `--no-flows "
              f"--no-count-syscalls`: **{redis[LEAN.name] / redis['none']:.2f}x** "
              f"({verdict(redis[LEAN.name] / redis['none'], 0.9)}; "
              f"{results['bpf'][LEAN.name, 'redis'][0]:,.0f} ns of BPF programs per request).",
              recorder_cost(capacity),
              "- Cost per uninteresting syscall against a bare raw tracepoint that only counts: measured by "
              "`ringbuf.py` in the same `make bench` (its section above), where each loop runs in interleaved "
              "rounds a thousand times longer than here.",
              "", "### Published figures (not measured here)", "",
              "Falco, Tracee and Tetragon cannot be built on this machine. Figures their projects have "
              "published, as the project's benchmark issue quotes them, for orientation only: other machines, "
              "other workloads, not measured here and not comparable ratio for ratio.", "",
              "| tool | figure | source |", "| --- | --- | --- |"]
    lines += [f"| {tool} | {figure} | {source} |" for tool, figure, source in PUBLISHED]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots) + ".", END]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main("endtoend", __doc__, BEGIN, END, lambda quick: Bench(quick).run(), report, needs_root=True)

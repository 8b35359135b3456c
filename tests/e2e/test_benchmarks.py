"""The benchmarks' quick mode runs, so the harness cannot rot (speed is judged in
benchmarks/RESULTS.md, never here)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def quick(name, tmp_path):
    """A benchmark's quick mode: the section it writes."""
    output = tmp_path / "RESULTS.md"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--quick", "--output", str(output)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = output.read_text()
    assert f"<!-- {name}: begin -->" in report and f"<!-- {name}: end -->" in report
    assert f"Command: `benchmarks/{name}.py --quick`" in report
    return report


def test_ringbuf_benchmark_quick_mode(tmp_path):
    report = quick("ringbuf", tmp_path)
    steps = re.findall(r"^\| (transport|captured) \| (numba|bcc) \| ([\d,]+) \| [\d,]+ \| ([\d,]+) \| ([\d,]+) \| "
                       r"([\d,]+) \|", report, re.M)
    assert {s[:2] for s in steps} == {(load, consumer) for load in ("transport", "captured")
                                      for consumer in ("numba", "bcc")}
    for _, _, _, generated, delivered, lost in steps:
        # every event is delivered or counted lost
        assert int(delivered.replace(",", "")) + int(lost.replace(",", "")) == int(generated.replace(",", ""))
    for mode in ("nothing attached", "bare BCC raw tracepoint, one per-CPU counter",
                 "bare BCC raw tracepoint counting by syscall number",
                 "bare BCC raw tracepoint counting by cgroup and syscall number",
                 "one per-CPU counter plus an empty raw sys_exit", "one per-CPU counter plus an empty per-syscall exit", r"\*\*Mayfly attached, nothing of interest\*\*",
                 "Mayfly capturing openat", "Mayfly emitting"):
        assert re.search(rf"\| {mode}[^|]*\| \w+ \| [\d.]+ \|", report), mode
    # Mayfly's enter program ran in both bpf_stats runs, and its exit only when emitting.
    assert re.search(r"^\| raw_tracepoint__sys_enter \| [\d.]+ \| [1-9][\d,]* \| [\d.]+ \| [1-9]", report, re.M)
    assert re.search(r"^\| syscall_exit \| 0\.0 \| 0 \| [\d.]+ \| [1-9]", report, re.M)


def test_engine_benchmark_quick_mode(tmp_path):
    report = quick("engine", tmp_path)
    # rules | count | stream | engine on rows | first pass | engine on records | matches | ...
    rows = re.findall(r"^\| ([^|]+) \| (\d+) \| (match-heavy|quiet) \| ([\d,]+) \| [\d,]+ \| ([\d,]+) \| ([\d,]+) \|",
                      report, re.M)
    assert {(r[1], r[2]) for r in rows} >= {(n, s) for n in ("10", "100", "1000") for s in ("match-heavy", "quiet")}
    for _, _, stream, rate, on_records, matches in rows:
        assert int(rate.replace(",", "")) > 0 and int(on_records.replace(",", "")) > 0
        assert (int(matches.replace(",", "")) > 0) is (stream == "match-heavy")


def test_endtoend_benchmark_quick_mode(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from endtoend import LABELS, LEAN, NO_RECORDER, SENSORS, WORKLOADS  # the benchmark's own names

    report = quick("endtoend", tmp_path)
    header = re.search(r"^\| workload \| where \| CPUs \| (.+) \|$", report, re.M).group(1).split(" | ")
    assert header == [s.label for s in SENSORS]
    for workload in WORKLOADS:
        for where in ("host", "container"):
            for placement in ("apart", "same CPU"):
                cells = re.search(rf"^\| {workload} \| {where} \| {placement} \| (.+) \|$", report, re.M).group(1)
                assert all(re.fullmatch(r"[\d,]+ \([\d.]+x\)", c) for c in cells.split(" | ")), cells
    # The openat workload's container: Mayfly's full pipeline saw every operation; the
    # peers saw its events (they may lose some, as may Mayfly emitting every event).
    section = report[report.index("### Events delivered"):]
    row = re.search(r"^\| openat \| ([\d,]+) \| (.+) \|$", section, re.M)
    operations = int(row.group(1).replace(",", ""))
    delivered = dict(zip([s.name for s in SENSORS][1:], row.group(2).split(" | ")))
    assert int(delivered["full"].replace(",", "")) >= 2 * operations, row.group(0)  # each openat and close
    assert int(delivered["bcc"].split()[0].replace(",", "")) > 0, row.group(0)
    assert int(delivered["bpftrace"].split()[0].replace(",", "")) > 0, row.group(0)
    rates = dict(re.findall(r"^\| (Mayfly, full pipeline[^|]*|BCC peer[^|]*|bpftrace peer[^|]*) \| ([\d,]+) \| "
                            r"(?:the workload|the sensor)[^|]* \|$", report, re.M))
    assert len(rates) == 4 and int(rates[LABELS["full"]].replace(",", "")) > 0, rates
    assert int(rates[NO_RECORDER.label].replace(",", "")) > 0, rates
    assert re.search(r"The flight recorder \(on by default; issue 16\): lossless at \*\*[\d,]+\*\* iterations/s", report)
    assert re.search(r"requests/s of nothing attached \(target >= 0.9x: (met|missed by \d+%)\)", report)
    assert re.search(rf"^\| {re.escape(LEAN.label)} \| [\d,]+ \| [\d.]+x \|$", report, re.M)
    for target in ("1.4x", "15x", "4x"):
        assert re.search(rf"target >= {target}: (met|missed by \d+%)", report), target
    for plot in ("workload-cost.png", "lossless-rate.png", "redis.png"):
        assert (tmp_path / "results" / plot).read_bytes()[:4] == b"\x89PNG"


def test_needles_benchmark_quick_mode(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from needles import LABELS

    report = quick("needles", tmp_path)
    rows = dict(re.findall(r"^\| ([^|]+) \| ([\d,]+) \| the (?:sensor|workload, as this sensor slows it) \| [\d,-]+ \|$",
                           report, re.M))
    assert set(rows) == set(LABELS.values()) and all(int(r.replace(",", "")) > 0 for r in rows.values())
    assert len(re.findall(r"^- .*: \*\*(met|missed)\*\*", report, re.M)) == 2
    # The flood's one needle: Mayfly raises its alert (what the issue asks of it).
    assert re.search(rf"^\| {re.escape(LABELS['mayfly'])} \| [\d,]+ \| [\d,]+ \| 1 \| [\d,]+ \|$", report, re.M)


def test_memory_benchmark_quick_mode(tmp_path):
    report = quick("memory", tmp_path)
    samples = re.findall(r"^\| ([\d,]+) \| ([\d.]+) \|$", report, re.M)
    assert [n for n, _ in samples] == ["0", "100", "200"] and all(float(m) > 0 for _, m in samples)
    assert len(re.findall(r"^- .*: \*\*(met|missed)\*\*", report, re.M)) == 2


def test_capture_benchmark_quick_mode(tmp_path):
    report = quick("capture", tmp_path)
    timings = re.findall(r"^\| Mayfly: the triggering event to the cgroup frozen, [^(]+\((\d+) cases\) \| "
                         r"([\d.,]+) ms \| ([\d.,]+) ms \|$", report, re.M)
    assert [int(n) for n, _, _ in timings] == [5, 5]  # every container's case, running and starting
    assert re.search(r"^\| Responder: .* \(5 alerts\) \| [\d.,]+ ms \| [\d.,]+ ms \|$", report, re.M)
    costs = re.findall(r"^\| `load (?:openat|shadow)` [^|]+ \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| [\d.]+x \|$",
                       report, re.M)
    assert len(costs) == 3 and all(int(v.replace(",", "")) > 0 for row in costs for v in row)
    assert len(re.findall(r"the goal is under 10 ms: \*\*(met|missed)\*\*", report)) == 2


def test_response_benchmark_quick_mode(tmp_path):
    report = quick("response", tmp_path)
    starts = re.findall(r"^\| `runc [^|]+ \((\d+) each\) \| ([\d.,]+) ms \| ([\d.,]+) ms \| ([\d.,]+) ms \| ([\d.,]+) ms "
                        r"\| ([\d.,]+) ms \| ([\d.,]+) ms \| [-+][\d.,]+ ms \| [-+][\d.,]+ ms \|$", report, re.M)
    assert len(starts) == 2 and all(int(row[0]) == 4 for row in starts)
    assert re.search(r"the goal is under 5 ms: \*\*(met|missed)\*\*", report)
    kills = re.findall(r"^\| (Mayfly `actions: \[kill_process\]`|Responder)[^|]* \| ([\d.,]+) ms \| ([\d.,]+) ms \| "
                       r"(\d+) of 4 \|$", report, re.M)
    assert [k[0] for k in kills] == ["Mayfly `actions: [kill_process]`", "Responder"]
    assert kills[0][3] == "0"  # the kernel held each process at its act: no next step ran

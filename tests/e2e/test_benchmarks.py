"""The benchmarks' quick mode runs, so the harness cannot rot (speed is judged in
benchmarks/RESULTS.md, never here)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ringbuf_benchmark_quick_mode(tmp_path):
    output = tmp_path / "RESULTS.md"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ringbuf.py"), "--quick", "--output", str(output)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = output.read_text()
    assert "<!-- ringbuf: begin -->" in report and "<!-- ringbuf: end -->" in report
    assert "Command: `benchmarks/ringbuf.py --quick`" in report
    steps = re.findall(r"^\| (transport|captured) \| (numba|bcc) \| ([\d,]+) \| [\d,]+ \| ([\d,]+) \| ([\d,]+) \| "
                       r"([\d,]+) \|", report, re.M)
    assert {s[:2] for s in steps} == {(load, consumer) for load in ("transport", "captured")
                                      for consumer in ("numba", "bcc")}
    for _, _, _, generated, delivered, lost in steps:
        # every event is delivered or counted lost
        assert int(delivered.replace(",", "")) + int(lost.replace(",", "")) == int(generated.replace(",", ""))
    for mode in ("nothing attached", "bare BCC raw tracepoint", "the same plus an empty raw sys_exit",
                 "the same plus an empty per-syscall exit", r"\*\*Mayfly attached, nothing of interest\*\*",
                 "Mayfly capturing openat", "Mayfly emitting"):
        assert re.search(rf"\| {mode}[^|]*\| \w+ \| [\d.]+ \|", report), mode
    # Mayfly's enter program ran in both bpf_stats runs, and its exit only when emitting.
    assert re.search(r"^\| raw_tracepoint__sys_enter \| [\d.]+ \| [1-9][\d,]* \| [\d.]+ \| [1-9]", report, re.M)
    assert re.search(r"^\| syscall_exit \| 0\.0 \| 0 \| [\d.]+ \| [1-9]", report, re.M)


def test_engine_benchmark_quick_mode(tmp_path):
    output = tmp_path / "RESULTS.md"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "engine.py"), "--quick", "--output", str(output)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = output.read_text()
    assert "<!-- engine: begin -->" in report and "Command: `benchmarks/engine.py --quick`" in report
    rows = re.findall(r"^\| ([^|]+) \| (\d+) \| (match-heavy|quiet) \| ([\d,]+) \| [\d,]+ \| ([\d,]+) \|", report, re.M)
    assert {(r[1], r[2]) for r in rows} >= {(n, s) for n in ("10", "100", "1000") for s in ("match-heavy", "quiet")}
    for _, _, stream, rate, matches in rows:
        assert int(rate.replace(",", "")) > 0
        assert (int(matches.replace(",", "")) > 0) is (stream == "match-heavy")

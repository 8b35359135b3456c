"""The `mayfly` command (also `python -m sensor`)."""

from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import click

from sensor import control_socket, doctor, records
from sensor.detect import rule_loader
from sensor.detect.rule_loader import PRIORITIES
from sensor.forensics import capture
from sensor.forensics.recorder import DEFAULT_MAX_AGE_S, DEFAULT_MAX_EVENTS, DEFAULT_TOTAL_BYTES, FlightRecorder
from sensor.forensics.store import DEFAULT_BUDGET, DEFAULT_ROOT as DEFAULT_CASES, CaseStore, StoreError
from sensor.kernel import bpf_program
from sensor.output import sinks
from sensor.policy import policy_file
from sensor.system import host
from sensor.kernel.bpf_program import ProgramConfig
from sensor.log import configure_cli, get_logger

log = get_logger("cli")


@click.group()
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Level of the sensor's own logs.")
def main(log_level: str) -> None:
    """Mayfly: an eBPF runtime security sensor for short-lived containers."""
    configure_cli(getattr(logging, log_level.upper()))


def _sink(ctx, param, values):
    try:
        return [sinks.parse(v) for v in values]
    except (ValueError, OSError) as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@click.option("--rules", "rule_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Rule file (repeatable). Default: the built-in rules.")
@click.option("--output", "-o", "outputs", multiple=True, metavar="SINK", callback=_sink, expose_value=True,
              help="file:PATH (msgpack, rotated), stdout:text, stdout:json, stdout:msgpack, or stdout / - "
                   "(text on a terminal, JSON lines otherwise). Repeatable; default: stdout.")
@click.option("--emit-events", is_flag=False, flag_value="all", default=None, metavar="[TYPES]",
              help="Emit raw events as records: all, or a comma-separated list of types (execve,openat,...).")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("--ringbuf-pages", default=ProgramConfig.ringbuf_pages, show_default=True,
              help="Ring buffer size in pages (a power of two).")
@click.option("--cgroup-rate", default=ProgramConfig.cgroup_rate, show_default=True,
              help="Events per second one cgroup may emit on average (0: no limit); over it, a cgroup is "
                   "held back only while the ring buffer is under pressure.")
@click.option("--ring-pressure", default=ProgramConfig.ring_pressure, show_default=True,
              type=click.FloatRange(0, 1),
              help="How full the ring buffer is (a fraction) when cgroups over their rate are held back (0: always).")
@click.option("--report-interval", default=10.0, show_default=True, help="Seconds between flow and count records.")
@click.option("--identity-deadline", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a new cgroup's records wait for its runtime's state before going out unresolved.")
@click.option("--container-grace", default=300.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a removed container's identity is kept for late records.")
@click.option("--ancestors", default=5, show_default=True, type=click.IntRange(min=0),
              help="Generations of ancestors' names records carry (proc.anames).")
@click.option("--flows/--no-flows", default=ProgramConfig.flows, show_default=True,
              help="Account network flows per cgroup (cgroup_skb programs on every packet; flow records).")
@click.option("--count-syscalls/--no-count-syscalls", default=ProgramConfig.count_syscalls, show_default=True,
              help="Count every syscall per cgroup (syscall_counts records).")
@click.option("--recorder-bytes", default=DEFAULT_TOTAL_BYTES, show_default=True,
              type=click.IntRange(min=0), help="The flight recorder's bound on all containers' events (0: off).")
@click.option("--recorder-events", default=DEFAULT_MAX_EVENTS, show_default=True,
              type=click.IntRange(min=1), help="The flight recorder keeps a container's last N events...")
@click.option("--recorder-seconds", default=DEFAULT_MAX_AGE_S, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="...of the last S seconds.")
@click.option("--capture/--no-capture", "capturing", default=True, show_default=True,
              help="Freeze and capture a container into a case on a trigger (docs/cases.md).")
@click.option("--cases", "cases_dir", default=DEFAULT_CASES, show_default=True, type=click.Path(file_okay=False),
              help="The case store.")
@click.option("--cases-budget", default=DEFAULT_BUDGET, show_default=True, type=click.IntRange(min=1),
              help="Bytes the case store may hold; the cases of least value go first.")
@click.option("--capture-priority", default="WARNING", show_default=True,
              type=click.Choice(PRIORITIES, case_sensitive=False),
              help="Alerts at this priority or above trigger a capture (and rules with capture: true).")
@click.option("--after-capture", default=capture.THAW, show_default=True, type=click.Choice(capture.AFTER_CAPTURE),
              help="What becomes of a container once captured: thawed, left frozen or killed.")
@click.option("--control", "control_path", default=control_socket.DEFAULT_PATH, show_default=True,
              type=click.Path(dir_okay=False), help="The control socket `mayfly capture` talks to (root only).")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False),
              help="Policy file: each container's verdict from its spawn, the spawn gate, responses to alerts "
                   "(docs/policy.md). Reloaded on SIGHUP and when it changes.")
@click.option("--print-ebpf", is_flag=True, help="Print the C and cflags BCC compiles, then exit.")
def run(rule_paths, outputs, emit_events, duration, ringbuf_pages, cgroup_rate, ring_pressure, report_interval,
        identity_deadline, container_grace, ancestors, flows, count_syscalls, recorder_bytes, recorder_events,
        recorder_seconds, capturing, cases_dir, cases_budget, capture_priority, after_capture, control_path,
        policy_path, print_ebpf) -> None:
    """Run the sensor in the foreground until interrupted (needs root)."""
    from sensor.sensor import Sensor

    try:
        config = ProgramConfig(ringbuf_pages=ringbuf_pages, cgroup_rate=cgroup_rate, ring_pressure=ring_pressure,
                               flows=flows, count_syscalls=count_syscalls)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if print_ebpf:
        try:
            defines = bpf_program.tracepoint_defines(host.tracefs_root())
        except host.HostError as e:
            defines = []
            click.echo(f"// without the optional tracepoints: {e}")
        click.echo(bpf_program.render(config, defines))
        return
    types = None if emit_events in (None, "all") else [t.strip() for t in emit_events.split(",") if t.strip()]
    recorder = recorder_bytes > 0 and FlightRecorder(
        total_bytes=recorder_bytes, max_events=recorder_events, max_age_s=recorder_seconds, grace_s=container_grace)
    try:
        store = CaseStore(cases_dir, budget_bytes=cases_budget, writer=True) if capturing else None
    except (OSError, sqlite3.Error, StoreError) as e:
        raise click.ClickException(f"the case store {cases_dir}: {e}") from None
    sensor = Sensor(rules=rule_paths or None, sinks=outputs or [sinks.StreamSink()], config=config,
                    emit_events=types if types is not None else emit_events, report_interval=report_interval,
                    identity_deadline=identity_deadline, container_grace=container_grace, ancestors=ancestors,
                    recorder=recorder, cases=store, capture_priority=capture_priority.upper(),
                    capture_settings=capture.Settings(after_capture=after_capture), policy=policy_path)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sensor.stop())
    signal.signal(signal.SIGHUP, lambda *_: sensor.reload())
    deadline = time.monotonic() + duration if duration is not None else None
    try:
        with sensor:
            # What start-up made (compiled programs, Numba's and BCC's objects) lives as long
            # as the sensor: out of the collector's way, a full collection takes
            # milliseconds instead of the ~60 ms that would hold up identity resolution.
            gc.freeze()
            control = control_socket.ControlServer(control_path, sensor.capture if capturing else None,
                                                   sensor.set_mode, sensor.thaw)
            try:
                while not sensor.stopped:
                    sensor.poll()
                    if deadline is not None and time.monotonic() >= deadline:
                        sensor.stop()
            finally:
                if control is not None:
                    control.close()
    except Exception as e:  # BCC raises bare Exception for compile and attach failures
        log.error("sensor failed", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
    finally:
        if store is not None:
            store.close()
    log.info("sensor stopped")


@main.group()
def policy() -> None:
    """Policy files."""


@policy.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def policy_check(path: str) -> None:
    """Load a policy file as `mayfly run --policy` would: print each problem
    (file:line: reason), then what loaded. Exit 1 if there was any problem."""
    loaded = policy_file.load(path)
    for problem in loaded.problems:
        click.echo(str(problem))
    click.echo(f"{len(loaded.rules)} policy rules, {len(loaded.responses)} responses, {len(loaded.protect)} "
               f"protected, gate {'on' if loaded.gating else 'off'}; {len(loaded.problems)} problems")
    if loaded.problems:
        sys.exit(1)


@main.group()
def rules() -> None:
    """Rule files."""


@rules.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--allow-rejected", is_flag=True, help="Exit 0 even when some rules were rejected.")
@click.option("--report", type=click.Path(dir_okay=False), help="Also write the rejected rules as a Markdown table.")
def rules_check(paths, allow_rejected: bool, report: str | None) -> None:
    """Load rule files as `mayfly run` would: print each problem (file:line: rule:
    reason), then `N rules loaded, M rejected`. Exit 1 if there was any problem."""
    ruleset = rule_loader.load(paths)
    for problem in ruleset.problems:
        click.echo(str(problem))
    summary = f"{ruleset.loaded} rules loaded, {len(ruleset.rejected)} rejected"
    if ruleset.disabled:
        summary += f" ({len(ruleset.disabled)} more loaded but disabled)"
    click.echo(summary)
    if report:
        with open(report, "w") as f:
            f.write(rule_loader.markdown_report(ruleset, ["mayfly", "rules", "check", *paths]))
    # A file that could not be read at all lost its rules too: that is not a pass either.
    sys.exit(0 if allow_rejected or not ruleset.problems else 1)


@main.group()
@click.option("--store", "store_dir", default=DEFAULT_CASES, show_default=True, type=click.Path(file_okay=False),
              help="The case store.")
@click.pass_context
def cases(ctx, store_dir: str) -> None:
    """Cases: the evidence kept of containers (docs/cases.md)."""
    ctx.obj = store_dir


def _case_store(ctx) -> CaseStore:
    if not os.path.isdir(ctx.obj):
        raise click.ClickException(f"no case store at {ctx.obj}")
    try:
        return CaseStore(ctx.obj)
    except (OSError, sqlite3.Error, StoreError) as e:
        raise click.ClickException(f"{ctx.obj}: {e}") from None


@contextmanager
def _case_errors():
    try:
        yield
    except (OSError, StoreError) as e:
        raise click.ClickException(str(e)) from None


@cases.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of cases.")
@click.pass_context
def cases_list(ctx, as_json: bool) -> None:
    """Every case, oldest first."""
    found = _case_store(ctx).list() if os.path.isdir(ctx.obj) else []
    if as_json:
        click.echo(json.dumps(found, default=records.json_default))
        return
    for case in found:
        container = case["container"]
        click.echo(records.safe(
            f"{case['id']} {case['state']}{' locked' if case['locked'] else ''} {case['trigger']['priority']} "
            f"rule={case['trigger']['rule']!r} container={container.get('id')} image={container.get('image')} "
            f"bytes={case['bytes']} score={case['score']:.4g}"))


@cases.command("show")
@click.argument("case_id")
@click.pass_context
def cases_show(ctx, case_id: str) -> None:
    """A case's manifest, with its score as of now (JSON)."""
    with _case_errors():
        click.echo(json.dumps(_case_store(ctx).manifest(case_id), indent=2, default=records.json_default))


@cases.command("export")
@click.argument("case_id")
@click.argument("dest", type=click.Path(file_okay=False))
@click.pass_context
def cases_export(ctx, case_id: str, dest: str) -> None:
    """Every artifact of a case as a plain file under DEST, with the manifest."""
    with _case_errors():
        click.echo(_case_store(ctx).export(case_id, dest))


@cases.command("report")
@click.argument("case_id")
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False),
              help="Write the case as one self-contained HTML page here.")
@click.pass_context
def cases_report(ctx, case_id: str, html_path: str) -> None:
    """A case as an HTML page: its timeline drawn, its process tree, its artifacts and
    hashes, what is missing, and why it was kept."""
    from sensor.forensics import report

    with _case_errors():
        store = _case_store(ctx)
        manifest = store.manifest(case_id)
        page = report.render(manifest, store.unpacked(manifest, "events", "timeline.msgpack") or [],
                             store.unpacked(manifest, "processes", "tree.msgpack") or [])
        with open(html_path, "w", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
            f.write(page)
    click.echo(html_path)


def _case_action(name: str, doc: str, act: Callable[[CaseStore, str], None]) -> None:
    @cases.command(name, help=doc)
    @click.argument("case_id")
    @click.pass_context
    def command(ctx, case_id: str) -> None:
        with _case_errors():
            act(_case_store(ctx), case_id)


_case_action("lock", "Keep a case whatever its score or age.", lambda store, case_id: store.set_locked(case_id, True))
_case_action("unlock", "Let a case go by its score and age again.",
             lambda store, case_id: store.set_locked(case_id, False))
_case_action("rm", "Remove a case, and the blobs no other case holds.", CaseStore.remove)

@main.command("capture")
@click.argument("container_id")
@click.option("--control", "control_path", default=control_socket.DEFAULT_PATH, show_default=True,
              type=click.Path(dir_okay=False), help="The running sensor's control socket.")
def capture_command(container_id: str, control_path: str) -> None:
    """Ask the running sensor to freeze and capture a container now; print its case (JSON)."""
    click.echo(json.dumps(_ask(control_path, {"capture": container_id})["case"], indent=2))


def _ask(control_path: str, asked: dict) -> dict:
    try:
        answer = control_socket.request(control_path, asked)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{control_path}: no sensor answers ({e}); is `mayfly run` running?") from None
    if "error" in answer:
        raise click.ClickException(answer["error"])
    return answer


_CONTROL = click.option("--control", "control_path", default=control_socket.DEFAULT_PATH, show_default=True,
                        type=click.Path(dir_okay=False), help="The running sensor's control socket.")


@main.command("mode")
@click.argument("mode", type=click.Choice([*policy_file.MODES, "policy"]))
@click.option("--rule", help="Only this rule's responses (default: every rule's, and the placement verdicts).")
@_CONTROL
def mode_command(mode: str, rule: str | None, control_path: str) -> None:
    """Switch the running sensor's responses to enforce, monitor or dry-run (`policy`:
    back to what the policy file says)."""
    _ask(control_path, {"mode": None if mode == "policy" else mode, "rule": rule})
    click.echo(f"{rule or 'every rule'}: {mode}")


@main.command("thaw")
@click.argument("container_id")
@_CONTROL
def thaw_command(container_id: str, control_path: str) -> None:
    """Thaw a container a response froze."""
    _ask(control_path, {"thaw": container_id})
    click.echo(f"thawed {container_id}")


@main.command("doctor")
@click.option("--fix", is_flag=True, help="Mount tracefs/securityfs and link fallback headers first.")
def doctor_command(fix: bool) -> None:
    """Report what this host offers against what Mayfly needs; non-zero if a requirement is missing."""
    checks = doctor.run(fix=fix)
    click.echo(doctor.report(checks))
    sys.exit(1 if any(c.required and not c.ok for c in checks) else 0)


@main.command()
@click.argument("source")
@click.option("--rules", "rule_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Run these rules over the records and print their alerts only (repeatable).")
@click.option("--store", "store_dir", default=DEFAULT_CASES, show_default=True, type=click.Path(file_okay=False),
              help="The case store SOURCE is a case of.")
def replay(source: str, rule_paths: tuple[str, ...], store_dir: str) -> None:
    """Print the records of SOURCE: a msgpack file written by `mayfly run --output
    file:PATH`, or a case's recorded events (its id). With --rules, run those rules over
    the events instead and print the alerts they raise."""
    if os.path.isfile(source):
        found = _file_records(source)
    else:
        if not os.path.isdir(store_dir):
            raise click.ClickException(f"{source} is neither a file nor a case: there is no case store at {store_dir}")
        with _case_errors():
            store = CaseStore(store_dir)
            manifest = store.manifest(source)
            found = iter(store.unpacked(manifest, "events", "timeline.msgpack") or [])
    if rule_paths:
        ruleset = rule_loader.load(rule_paths)
        for problem in ruleset.problems:
            click.echo(f"rule rejected: {problem}", err=True)
        from sensor.detect.alerts import Alerts

        found = iter(Alerts(ruleset)([r for r in found if r.get("kind") == "event"]))
    for record in found:
        click.echo(records.describe(record))


def _file_records(path: str):
    with open(path, "rb") as f:
        try:
            yield from records.read_stream(f)
        except ValueError as e:
            raise click.ClickException(f"{path}: damaged after the records above: {e}") from None

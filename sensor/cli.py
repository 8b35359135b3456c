"""The `mayfly` command (also `python -m sensor`)."""

from __future__ import annotations

import logging
import signal
import sys

import click

from sensor import bpf_program, doctor, records
from sensor.bpf_program import ProgramConfig
from sensor.log import configure_cli, get_logger

log = get_logger("cli")


@click.group()
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Level of the sensor's own logs.")
def main(log_level: str) -> None:
    """Mayfly: an eBPF runtime security sensor for short-lived containers."""
    configure_cli(getattr(logging, log_level.upper()))


@main.command()
@click.option("--rules", "rule_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Rule file (repeatable). Default: the built-in rules.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Append msgpack records to this file.")
@click.option("--quiet", "-q", is_flag=True, help="No human-readable lines on stdout.")
@click.option("--ringbuf-pages", default=ProgramConfig.ringbuf_pages, show_default=True,
              help="Ring buffer size in pages (a power of two).")
@click.option("--print-ebpf", is_flag=True, help="Print the C and cflags BCC compiles, then exit.")
def run(rule_paths, output, quiet, ringbuf_pages, print_ebpf) -> None:
    """Run the sensor in the foreground until interrupted (needs root)."""
    from sensor.sensor import Sensor
    from sensor.sinks import ConsoleSink, FileSink

    try:
        config = ProgramConfig(ringbuf_pages=ringbuf_pages)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ringbuf-pages") from None
    if print_ebpf:
        click.echo(bpf_program.render(config))
        return
    sinks = [] if quiet else [ConsoleSink()]
    if output:
        sinks.append(FileSink(output))
        log.info("writing records", path=output)
    sensor = Sensor(rules=rule_paths or None, sinks=sinks, config=config)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sensor.stop())
    try:
        with sensor:
            for _ in sensor:
                pass
    except Exception as e:  # BCC raises bare Exception for compile and attach failures
        log.error("sensor failed", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
    log.info("sensor stopped")


@main.command("doctor")
@click.option("--fix", is_flag=True, help="Mount tracefs/securityfs and link fallback headers first.")
def doctor_command(fix: bool) -> None:
    """Report what this host offers against what Mayfly needs; non-zero if a requirement is missing."""
    checks = doctor.run(fix=fix)
    click.echo(doctor.report(checks))
    sys.exit(1 if any(c.required and not c.ok for c in checks) else 0)


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def replay(path: str) -> None:
    """Print the records of a msgpack file written by `mayfly run --output`."""
    with open(path, "rb") as f:
        try:
            for record in records.read_stream(f):
                click.echo(records.describe(record))
        except ValueError as e:
            raise click.ClickException(f"{path}: damaged after the records above: {e}") from None

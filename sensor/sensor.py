"""The Sensor: load the programs, drain the ring buffer, hand records to sinks and callers."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Iterator

from sensor import bpf_program, records, resources, rule_loader
from sensor.bpf_program import ProgramConfig
from sensor.decode import Decoder
from sensor.log import get_logger
from sensor.records import Record
from sensor.ringbuf import RingReader
from sensor.sinks import Sink

log = get_logger("sensor")


class Sensor:
    """A running sensor. Use it as a context manager:

        with Sensor(sinks=[FileSink("records.msgpack")]) as sensor:
            for record in sensor:        # or: sensor.poll() in your own loop
                ...

    `rules`: rule file paths; None means the built-in set. `on_record` is called with
    every record, after the sinks. Needs root (CAP_BPF and CAP_PERFMON).
    """

    def __init__(self, rules: Iterable[str | os.PathLike] | None = None, sinks: Iterable[Sink] = (),
                 on_record: Callable[[Record], None] | None = None, config: ProgramConfig | None = None):
        self.rule_paths = list(rules) if rules is not None else resources.builtin_rule_files()
        self.sinks = list(sinks)
        self.on_record = on_record
        self.config = config or ProgramConfig()
        self.ruleset: rule_loader.RuleSet | None = None
        self._bpf = None
        self._ring: RingReader | None = None
        self._decoder = Decoder()
        constants = self._decoder.layout.constants
        self._loss_reasons = {constants["MAYFLY_STAT_RINGBUF_FULL"]: "ring buffer full"}
        self._lost_seen = [0] * constants["MAYFLY_STAT_COUNT"]
        self._stopped = False

    def __enter__(self) -> Sensor:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        while not self._stopped:
            yield from self.poll()

    def start(self) -> None:
        self.ruleset = rule_loader.load(self.rule_paths)
        for problem in self.ruleset.problems:
            log.error("rule rejected", problem=str(problem))
        log.info("rules loaded", rules=len(self.ruleset.rules), rejected=len(self.ruleset.problems))
        self._bpf = bpf_program.load(self.config)
        self._seed_parents()
        ring = self._bpf[b"events"]
        self._ring = RingReader(ring.map_fd, ring.max_entries)
        log.info("sensor started", pid=os.getpid())

    def stop(self) -> None:
        """Ask a `for record in sensor` loop to end after the current poll."""
        self._stopped = True

    def poll(self, timeout_ms: int = 100) -> list[Record]:
        """Wait up to `timeout_ms` for events; return (and dispatch) the records."""
        if self._ring is None:
            raise RuntimeError("the sensor is not running: use it as a context manager or call start()")
        if not self._ring.pending():
            self._ring.wait(timeout_ms / 1000)
        arrays, unknown = self._decoder.split(self._ring.drain())
        batch = self._decoder.records(arrays)
        if unknown:
            batch.append(self._loss(unknown, "unknown event kind"))
        batch.extend(self._kernel_losses())
        self._dispatch(batch)
        return batch

    def close(self) -> None:
        self._stopped = True
        if self._bpf is None:
            return
        self.poll(0)  # what is still in the ring buffer
        self._ring.close()
        self._ring = None
        self._bpf.cleanup()
        self._bpf = None
        for sink in self.sinks:
            sink.close()

    def _dispatch(self, batch: list[Record]) -> None:
        for record in batch:
            for sink in self.sinks:
                sink.write(record)
            if self.on_record:
                self.on_record(record)
        if batch:
            for sink in self.sinks:
                sink.flush()

    def _kernel_losses(self) -> list[Record]:
        stats = self._bpf[b"stats"]
        result = []
        for index, reason in self._loss_reasons.items():
            total = stats[ctypes.c_int(index)].value
            if total > self._lost_seen[index]:
                result.append(self._loss(total - self._lost_seen[index], reason))
                self._lost_seen[index] = total
        return result

    def _loss(self, count: int, reason: str) -> Record:
        return records.new("loss", self._decoder.clock.now(), count=count, reason=reason)

    def _seed_parents(self) -> None:
        """Fill the kernel's parent_of map for processes that forked before we started."""
        parent_of = self._bpf[b"parent_of"]
        key_type, value_type = parent_of.Key, parent_of.Leaf
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                ppid = _read_ppid(entry.path)
                if ppid is not None:
                    parent_of[key_type(int(entry.name))] = value_type(ppid)


def _read_ppid(proc_dir: str) -> int | None:
    try:
        with open(os.path.join(proc_dir, "stat"), "rb") as f:
            # comm may hold spaces and parentheses: fields resume after the last ')'.
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None  # the process exited while we looked

"""Where records go: a msgpack file (rotated by size), stdout (text, JSON lines or
msgpack), or a callback.

A sink is anything with write(record), flush() and close(). `parse()` turns the
command line's SINK words (`file:PATH`, `stdout[:FORMAT]`, `-`) into sinks. The
pipeline holds each sink in a `Guarded`, so that one that fails (a full disk, a
closed pipe, a callback that raises) stops neither the sensor nor the other sinks.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Protocol

from sensor import records
from sensor.log import get_logger
from sensor.records import Record

log = get_logger("sinks")

STREAM_FORMATS = ("text", "json", "msgpack")


class Sink(Protocol):
    def write(self, record: Record) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class FileSink:
    """Appends msgpack records to a file, created with its parent directories and mode
    0600 (records name processes and files of every container on the host).

    Rotation: when the file reaches `max_bytes`, it becomes PATH.1 (PATH.1 becomes
    PATH.2, ...; `keep` old files are kept). Durability: records are written at each
    flush (each batch), and fsync'd at most every `fsync_interval` seconds, at rotation
    and at close; a crash loses at most that interval. A flush that fails (a full
    disk) leaves no partial record and raises (see _write_queued)."""

    def __init__(self, path: str, max_bytes: int = 256 << 20, keep: int = 4, fsync_interval: float = 1.0):
        if max_bytes <= 0 or keep < 0:
            raise ValueError("max_bytes must be positive and keep not negative")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.fsync_interval = fsync_interval
        self._queued: list[bytes] = []
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._open()

    def __str__(self) -> str:
        return f"file:{self.path}"

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._synced = time.monotonic()

    def write(self, record: Record) -> None:
        self._queued.append(records.pack(record))

    def _write_queued(self) -> None:
        """The queued records, one write per file. On a failure the current file is cut
        back to where this flush began in it and the queue is emptied, so that the
        caller can offer the same records again without duplicates (those written to a
        file rotated away in this flush excepted)."""
        start, queued, self._queued = self._size, self._queued, []
        chunk: list[bytes] = []
        pending = 0  # bytes in chunk
        try:
            for data in queued:
                if self._size + pending and self._size + pending + len(data) > self.max_bytes:
                    self._write(chunk)
                    chunk, pending = [], 0
                    self._rotate()
                    start = 0
                chunk.append(data)
                pending += len(data)
            self._write(chunk)
        except OSError:
            os.ftruncate(self._fd, start)  # no partial record for a reader to trip on
            self._size = start
            raise

    def _write(self, chunk: list[bytes]) -> None:
        data = b"".join(chunk)
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        self._size += len(data)

    def _rotate(self) -> None:
        self._sync()
        os.close(self._fd)
        for n in range(self.keep - 1, 0, -1):
            if os.path.exists(f"{self.path}.{n}"):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        if self.keep:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._open()

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._synced = time.monotonic()

    def flush(self) -> None:
        self._write_queued()
        if time.monotonic() - self._synced >= self.fsync_interval:
            self._sync()

    def close(self) -> None:
        try:
            self._write_queued()
            self._sync()
        finally:
            os.close(self._fd)


class StreamSink:
    """stdout (or another stream) in one of three formats: `text`, one readable line
    per record with control characters escaped; `json`, one JSON object per line
    (raw bytes as {"$bytes": base64}); `msgpack`, a binary stream. The default is
    text on a terminal and JSON lines otherwise (a pipe, a file, the journal)."""

    def __init__(self, stream: IO[str] | None = None, format: str | None = None):
        self.stream = stream or sys.stdout
        self.format = format or ("text" if self.stream.isatty() else "json")
        if self.format not in STREAM_FORMATS:
            raise ValueError(f"unknown stream format {self.format!r}: use {', '.join(STREAM_FORMATS)}")

    def __str__(self) -> str:
        return f"stdout:{self.format}"

    def write(self, record: Record) -> None:
        if self.format == "text":
            self.stream.write(records.describe(record) + "\n")
        elif self.format == "json":
            self.stream.write(json.dumps(record, default=records.json_default, separators=(",", ":")) + "\n")
        else:
            self.stream.buffer.write(records.pack(record))

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()


class CallbackSink:
    """Calls a function with each record (for embedders)."""

    def __init__(self, callback: Callable[[Record], None]):
        self.callback = callback

    def __str__(self) -> str:
        return f"callback:{getattr(self.callback, '__qualname__', type(self.callback).__name__)}"

    def write(self, record: Record) -> None:
        self.callback(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Guarded:
    """One sink as the pipeline holds it. Records it fails to take for an I/O error (a
    full disk, a closed pipe) are kept and offered again with the next batch, up to
    `backlog` records; past that the oldest are dropped. A record that makes it raise
    anything else (a callback's bug) is dropped: offering it again would not help.
    What is dropped is counted and reported as a `lost` record (reason `sink_failed`)
    to every sink. Failures are logged at the first and then at most every
    `log_every_s`, and counted in the `stopped` record."""

    def __init__(self, sink: Sink, backlog: int = 100_000, log_every_s: float = 10.0):
        self.sink = sink
        self.name = str(sink)
        self.backlog: list[Record] = []
        self.limit = backlog
        self.log_every_s = log_every_s
        self.failures = 0
        self.dropped = 0
        self._unreported = 0
        self._logged = -log_every_s

    def deliver(self, batch: list[Record]) -> None:
        if not batch and not self.backlog:
            return  # an idle poll: nothing to write, nothing to flush
        self.backlog += batch
        if len(self.backlog) > self.limit:
            self._drop(len(self.backlog) - self.limit)
        at = 0
        try:
            while at < len(self.backlog):
                try:
                    self.sink.write(self.backlog[at])
                except OSError:
                    raise
                except Exception as e:  # this record, for this sink: trying again would not help
                    del self.backlog[at]
                    self.dropped += 1
                    self._unreported += 1
                    self._failed(e)
                    continue
                at += 1
            self.sink.flush()
        except OSError as e:  # I/O: the records stay, for the next batch
            self._failed(e)
            return
        self.backlog.clear()
        if self.failures and self._logged > 0:
            log.info("sink recovered", sink=self.name, failures=self.failures, dropped=self.dropped)
            self._logged = 0

    def _drop(self, count: int) -> None:
        del self.backlog[:count]
        self.dropped += count
        self._unreported += count

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        if time.monotonic() - self._logged >= self.log_every_s:
            self._logged = time.monotonic()
            log.error("sink failed: what it could not take is kept and offered again", sink=self.name,
                      error=f"{type(error).__name__}: {error}", backlog=len(self.backlog), dropped=self.dropped,
                      failures=self.failures)

    def losses(self) -> list[Record]:
        """A `lost` record for what this sink dropped since the last one (none if nothing)."""
        if not self._unreported:
            return []
        count, self._unreported = self._unreported, 0
        return [records.new("lost", time.time_ns(), reason="sink_failed", sink=self.name, count=count)]

    def state(self) -> dict:
        return {"failures": self.failures, "dropped": self.dropped, "backlog": len(self.backlog)}

    def close(self) -> None:
        try:
            self.sink.close()
        except Exception as e:
            log.error("sink failed at close", sink=self.name, error=f"{type(e).__name__}: {e}",
                      backlog=len(self.backlog))


def parse(spec: str) -> Sink:
    """A sink from its command-line form: `file:PATH`, `stdout`, `stdout:FORMAT` or `-`."""
    if spec in ("stdout", "-"):
        return StreamSink()
    if spec.startswith("stdout:"):
        return StreamSink(format=spec[len("stdout:"):])
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FileSink(spec[len("file:"):])
    raise ValueError(f"unknown sink {spec!r}: use file:PATH, stdout, stdout:text, stdout:json, stdout:msgpack or -")

"""Where records go: a msgpack file (rotated by size), stdout, or a callback.

A sink is anything with write(record), flush() and close(). `parse()` turns the
command line's SINK words (`file:PATH`, `stdout`, `-`) into sinks.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Protocol

from sensor import records
from sensor.records import Record


class Sink(Protocol):
    def write(self, record: Record) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class FileSink:
    """Appends msgpack records to a file, created with its parent directories and mode
    0600 (records name processes and files of every container on the host).

    Rotation: when the file reaches `max_bytes`, it becomes PATH.1 (PATH.1 becomes
    PATH.2, ...; `keep` old files are kept). Durability: data is flushed to the OS
    after each batch, and fsync'd at most every `fsync_interval` seconds, at rotation
    and at close; a crash loses at most that interval, and a reader sees at most one
    partial record at the end."""

    def __init__(self, path: str, max_bytes: int = 256 << 20, keep: int = 4, fsync_interval: float = 1.0):
        if max_bytes <= 0 or keep < 0:
            raise ValueError("max_bytes must be positive and keep not negative")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.fsync_interval = fsync_interval
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size
        self._synced = time.monotonic()

    def write(self, record: Record) -> None:
        data = records.pack(record)
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._sync()
        self._file.close()
        for n in range(self.keep - 1, 0, -1):
            if os.path.exists(f"{self.path}.{n}"):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        if self.keep:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._open()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._synced = time.monotonic()

    def flush(self) -> None:
        self._file.flush()
        if time.monotonic() - self._synced >= self.fsync_interval:
            self._sync()

    def close(self) -> None:
        self._sync()
        self._file.close()


class StreamSink:
    """stdout (or another stream): one readable line per record on a terminal, with
    control characters escaped; a msgpack stream otherwise (for pipes)."""

    def __init__(self, stream: IO[str] | None = None, lines: bool | None = None):
        self.stream = stream or sys.stdout
        self.lines = self.stream.isatty() if lines is None else lines

    def write(self, record: Record) -> None:
        if self.lines:
            self.stream.write(records.describe(record) + "\n")
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

    def write(self, record: Record) -> None:
        self.callback(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def parse(spec: str) -> Sink:
    """A sink from its command-line form: `file:PATH`, `stdout` or `-` (stdout)."""
    if spec in ("stdout", "-"):
        return StreamSink()
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FileSink(spec[len("file:"):])
    raise ValueError(f"unknown sink {spec!r}: use file:PATH, stdout or -")

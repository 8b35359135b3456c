"""Where records go: a msgpack file, a terminal, or anything with write/flush/close."""

from __future__ import annotations

import os
import sys
from typing import IO, Protocol

from sensor import records
from sensor.records import Record


class Sink(Protocol):
    def write(self, record: Record) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class FileSink:
    """Appends msgpack records to a file (created with its parent directories, mode 0600:
    records name processes and files of every container on the host)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab")

    def write(self, record: Record) -> None:
        self._file.write(records.pack(record))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ConsoleSink:
    """One human-readable line per record."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def write(self, record: Record) -> None:
        self.stream.write(records.describe(record) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()

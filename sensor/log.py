"""The sensor's own logs, through structlog on top of the standard `logging` module.

Library code only ever calls `get_logger()`: its events go to the stdlib logger
`mayfly.<name>`, which the embedding program routes and filters as it likes.
Nothing here touches global configuration except `configure_cli()`, which only the
`mayfly` command calls.
"""

from __future__ import annotations

import logging
import sys

import structlog

_SHARED = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

logging.getLogger("mayfly").addHandler(logging.NullHandler())


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.wrap_logger(
        logging.getLogger(f"mayfly.{name}"),
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[structlog.stdlib.filter_by_level, *_SHARED,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
    )


def configure_cli(level: int = logging.INFO, stream=None) -> None:
    """For the `mayfly` command: console lines on a TTY, JSON lines otherwise."""
    stream = stream or sys.stderr
    renderer = (structlog.dev.ConsoleRenderer(colors=True) if stream.isatty()
                else structlog.processors.JSONRenderer())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger("mayfly")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

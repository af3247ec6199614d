"""structlog set-up, called once by each entry point."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def renders_console(fmt: str, stream: TextIO) -> bool:
    """Whether `fmt` means console lines on `stream`: `auto` is console on a terminal only."""
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return fmt == "console"


def configure(level: str = "info", fmt: str = "auto") -> None:
    """JSON or console logs to stderr with contextvars merged in.

    `auto` (the default of `PTU_LOG_FORMAT`): console lines, coloured, when stderr is a
    terminal, one JSON object a line otherwise (a file, a pipe, a log collector).
    """
    console = renders_console(fmt, sys.stderr)
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=fmt == "auto")
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

"""structlog setup: JSON lines to .quanto/logs/quanto.log, readable lines on stderr."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

import structlog

_configured = False


def log_dir() -> Path:
    """Where log files go (`QUANTO_LOG_DIR`, default .quanto/logs)."""
    return Path(os.environ.get("QUANTO_LOG_DIR", ".quanto/logs"))


def configure_logging(level: str = "INFO", console: bool = True, filename: str = "quanto.log") -> None:
    """Route structlog and stdlib logging to a JSON file and (optionally) a console on stderr."""
    global _configured
    if _configured:
        return
    _configured = True
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.setLevel(level)
    folder = log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(folder / filename, maxBytes=20_000_000, backupCount=3)
    file_handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=shared,
        )
    )
    root.addHandler(file_handler)
    if console:
        console_handler = logging.StreamHandler()
        console_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.dev.ConsoleRenderer(colors=False),
                ],
                foreign_pre_chain=shared,
            )
        )
        root.addHandler(console_handler)
    # The SDK's own INFO chatter is noise for users; warnings still show.
    logging.getLogger("temporalio").setLevel(logging.WARNING)

"""structlog set-up: JSON lines when stderr is not a terminal, readable otherwise.

Every transition is one line (``msg=transition``) with the machine
(``board=...``), ``from_state``, ``to_state``, ``event`` and ``source``.
structlog reserves the ``event`` keyword for the message, so callers pass a
machine event as ``_event=...`` and the renderer writes it as ``event``.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer(to="msg", replace_by="_event"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library; keep them at warning and up.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

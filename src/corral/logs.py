"""structlog set-up: JSON lines when stderr is not a terminal, readable otherwise.

Every transition is one line (``msg=transition``) with the machine
(``board=...``), ``from_state``, ``to_state``, ``event`` and ``source``.
structlog reserves the ``event`` keyword for the message, so callers pass a
machine event as ``_event=...`` and the renderer writes it as ``event``.

``log_format`` (``--log-format`` of ``serve`` and ``sweep``) chooses the
renderer: ``json``, ``console`` (structlog's ConsoleRenderer: the message
first, coloured level, aligned keys) or ``auto``, console when stderr is a
terminal. Both renderers come after the same processors, so whatever those
do to a line (its renamed keys, its timestamp, its exception as plain text)
holds for both. Secrets are hidden where they are logged (``display_url``,
``hide_secrets``); the console renderer adds nothing of its own (no local
variables in tracebacks).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

# The key the message is under once EventRenamer has run (``event`` is the
# machine event's).
MESSAGE_KEY = "msg"


def renderer_for(fmt: str, stream: TextIO) -> structlog.typing.Processor:
    """The last processor of a line: ``fmt`` is json, console or auto (console
    when ``stream`` is a terminal)."""
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    if fmt == "console":
        # The message is the headline (not msg=... among the keys, with the
        # machine event in its place). Tracebacks stay format_exc_info's
        # plain text, as in JSON: rich's pretty ones print each frame's local
        # variables, and a local may hold a password or a token.
        return structlog.dev.ConsoleRenderer(colors=True, event_key=MESSAGE_KEY,
                                             exception_formatter=structlog.dev.plain_traceback)
    return structlog.processors.JSONRenderer()


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer(to=MESSAGE_KEY, replace_by="_event"),
            renderer_for(fmt, sys.stderr),
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

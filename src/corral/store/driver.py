"""What every backend shares about its driver, with no database library
imported: Corral's error for a driver exception, the JSON reader, the
MariaDB/MySQL session and the accepted URL spellings.

The SQLAlchemy store (:mod:`corral.store.sql`) and the raw-driver reader
(:mod:`corral.store.reader`) both build on it, so a driver error reads the
same whichever of them met it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.errors import DuplicateKey, SchemaNotCurrent, SchemaProblem, Unavailable
from corral.payload import UNREADABLE
from corral.store.revision import SCHEMA_REVISION

# The session every MariaDB/MySQL connection starts with: a value that does
# not fit a column is an error (never silently cut), and timestamps are UTC.
MYSQL_SESSION = ("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,"
                 "NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO', time_zone = '+00:00'")


@dataclass(frozen=True)
class DriverErrors:
    """A driver's (or SQLAlchemy's) exception classes, by what they mean."""

    unavailable: tuple[type[BaseException], ...] = ()
    duplicate: tuple[type[BaseException], ...] = ()
    schema: tuple[type[BaseException], ...] = ()

    def __add__(self, other: DriverErrors) -> DriverErrors:
        return DriverErrors(self.unavailable + other.unavailable,
                            self.duplicate + other.duplicate, self.schema + other.schema)


NO_DRIVER = DriverErrors()


def first_line(exc: BaseException) -> str:
    """The driver's message (SQLAlchemy's wrapped one if any), first line only."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


def classify(exc: BaseException, errors: DriverErrors) -> BaseException | None:
    """Corral's error for a database exception (None: not one of ``errors``)."""
    if isinstance(exc, errors.duplicate):
        return DuplicateKey(f"a row with the same key exists: {first_line(exc)}")
    if isinstance(exc, errors.unavailable):
        return Unavailable(f"database unavailable: {first_line(exc)}")
    if isinstance(exc, errors.schema):
        return SchemaProblem(f"database schema problem ({first_line(exc)}); run "
                             "`corral db upgrade`")
    return None


def require_revision(current: str | None) -> None:
    """Raises: SchemaNotCurrent (``current`` is not :data:`SCHEMA_REVISION`)."""
    if current != SCHEMA_REVISION:
        raise SchemaNotCurrent(
            f"database schema is at revision {current or 'none'}, this Corral needs "
            f"{SCHEMA_REVISION}; run `corral db upgrade`")


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` as psycopg 3 URLs, and
    ``mysql://`` and ``mariadb://`` as PyMySQL ones."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    for prefix in ("mysql://", "mariadb://"):
        if url.startswith(prefix):
            return prefix[:-3] + "+pymysql://" + url[len(prefix):]
    return url


def loads_json(data: bytes | str) -> Any:
    """``json.loads``, with the empty object most counters and vars hold read for
    free (the sweep reads one per due row).

    A stored document too deep for the decoder (written before the payload
    check bounded depth) reads as :data:`corral.payload.UNREADABLE` instead of
    failing every read of its page.
    """
    if data == b"{}" or data == "{}":
        return {}
    try:
        return json.loads(data)
    except RecursionError:
        return UNREADABLE

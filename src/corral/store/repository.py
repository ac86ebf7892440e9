"""What every repository of the store shares: the connection of the
transaction it was handed out by, and how a few values come back.

A repository holds the statements of one domain (``machines.py``,
``operations.py``, ``webhooks.py``, ...), each written once in SQLAlchemy
Core. A dialect that does something differently subclasses the repository
in its own file (``postgres.py``, ``mysql.py``, ``sqlite.py``) and its
transaction hands that subclass out instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection


class Repository:
    """The statements of one domain, run on one transaction's connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn


def new_id(result: Any) -> int:
    """The id of the row an insert just wrote (``RETURNING`` on PostgreSQL,
    the driver's last row id on SQLite, MariaDB and MySQL)."""
    key = result.inserted_primary_key
    assert key is not None
    assert key[0] is not None
    return int(key[0])


def aware(moment: Any) -> datetime:
    """A timestamp an aggregate returned, as an aware UTC datetime: ``min()``
    of a UTC column comes back as the driver gives it (SQLite: text;
    MariaDB: naive), not through the column's type."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

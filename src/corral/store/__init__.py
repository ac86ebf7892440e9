"""Corral's store: one port (:mod:`corral.store.port`), one implementation per
backend. :func:`open_store` picks the backend from the database URL.

Importing this package imports no database library; :func:`open_store` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.store.port import Store
    from corral.store.reader import Reader

from corral.store.revision import SCHEMA_REVISION

__all__ = ["DEFAULT_DATABASE_URL", "SCHEMA_REVISION", "head_revision", "open_reader",
           "open_store"]

DEFAULT_DATABASE_URL = "sqlite:///./var/corral.db"


def open_store(url: str, *, pool_size: int = 10) -> Store:
    """The store for ``url`` (``sqlite:///PATH``, ``postgresql://...`` or
    ``mysql://...`` / ``mariadb://...``).

    Raises:
        ConfigError: the URL is malformed or names an unsupported backend.
    """
    from corral.store.db import create_db_engine

    sa = create_db_engine(url, pool_size=pool_size)
    if sa.dialect.name == "postgresql":
        from corral.store.postgres import PgStore

        return PgStore(sa)
    if sa.dialect.name in ("mysql", "mariadb"):
        from corral.store.mysql import MysqlStore

        return MysqlStore(sa)
    from corral.store.sql import SqlStore

    return SqlStore(sa)


def open_reader(url: str) -> Reader | None:
    """The bare-driver reader for commands that only look, or None where the
    store should read (see :mod:`corral.store.reader`)."""
    from corral.store.reader import open_reader as reader

    return reader(url)


def head_revision() -> str | None:
    """The schema revision this Corral needs."""
    from corral.store.migrate import head_revision as head

    return head()

"""Alembic environment for Corral.

``corral db upgrade`` passes an open connection in ``config.attributes``; the
plain ``alembic`` command works too, taking ``sqlalchemy.url`` from the
``CORRAL_DATABASE_URL`` environment variable.
"""

import os

from alembic import context
from sqlalchemy import create_engine

from corral.store import DEFAULT_DATABASE_URL
from corral.store.driver import normalize_url
from corral.store.schema import metadata

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = normalize_url(os.environ.get("CORRAL_DATABASE_URL", DEFAULT_DATABASE_URL))
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()

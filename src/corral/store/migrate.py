"""Schema migrations: ``corral db upgrade`` and the start-up schema check."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from corral.errors import SchemaNotCurrent
from corral.paths import ALEMBIC_DIR


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` in one transaction."""
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def require_current(engine: Engine) -> None:
    """Raises:
    SchemaNotCurrent: the database is not at the head revision.
    """
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotCurrent(
            f"database schema is at revision {current or 'none'}, this Corral needs {head}; "
            "run `corral db upgrade`"
        )

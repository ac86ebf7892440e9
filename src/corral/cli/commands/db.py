"""``corral db``: creating and migrating the database schema."""

from __future__ import annotations

import click

from corral.cli.context import CliContext


def register(root: click.Group) -> None:
    root.add_command(db)


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(obj: CliContext) -> None:
    """Create or migrate the schema to the newest revision."""
    from corral.store import open_store

    store = open_store(obj.database_url)
    store.upgrade()
    click.echo(f"database at revision {store.current_revision()}")


@db.command("current")
@click.pass_obj
def db_current(obj: CliContext) -> None:
    """Show the schema revision of the database and the one this Corral needs."""
    from corral.store import head_revision, open_store

    store = open_store(obj.database_url)
    click.echo(f"current: {store.current_revision() or 'none'}  head: {head_revision()}")

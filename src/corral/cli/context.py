"""What every ``corral`` command is handed: the settings, and where answers come from.

The root group builds one :class:`CliContext` from the global options; commands
receive it with ``@click.pass_obj`` and ask it for the engine, the read-only
reader, or the board, pool and job clients (local, or a server under ``--url``).
It opens nothing until a command asks, so that ``corral --help`` and the read
commands start without the engine's stack. A command with no HTTP form (tokens,
webhooks, the schema, ``serve``) reaches the database only through
:attr:`CliContext.database_url` / :meth:`CliContext.engine`, which refuse when a
server was named instead of opening a database on this host.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from corral.cli.clients import (
    Boards,
    LocalBoards,
    LocalJobs,
    LocalPools,
    RemoteBoards,
    RemoteJobs,
    RemotePools,
)
from corral.config import Settings, load_settings
from corral.errors import InvalidRequest


@dataclass
class CliContext:
    config_file: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    # How the server was named: "--url" or "CORRAL_URL" (for messages).
    url_given_as: str = "--url"
    _settings: Settings | None = None

    def override(self, name: str, value: Any) -> None:
        """Apply a command's own option over the configuration (before first use)."""
        self.overrides[name] = value
        self._settings = None

    def boards(self, kind: str) -> Boards:
        """The database's machines, or a server's when --url / CORRAL_URL is given."""
        if self.url:
            return RemoteBoards(self.url, os.environ.get("CORRAL_TOKEN"), kind)
        return LocalBoards(self.reads(), self.engine, kind, actor())

    def jobs(self) -> LocalJobs | RemoteJobs:
        if self.url:
            return RemoteJobs(self.url, os.environ.get("CORRAL_TOKEN"))
        return LocalJobs(self.engine(), actor(), self.settings.mo_override_ttl)

    def pools(self) -> LocalPools | RemotePools:
        if self.url:
            return RemotePools(self.url, os.environ.get("CORRAL_TOKEN"))
        return LocalPools(self.engine(), actor(), self.settings.mo_override_ttl)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file, overrides=self.overrides)
        return self._settings

    @property
    def database_url(self) -> str:
        """The database a command works on directly.

        Raises:
            InvalidRequest: a server was named (--url / CORRAL_URL): such a
                command has no HTTP form, and would otherwise open the
                configured (or default ./var) database on this host.
        """
        if self.url:
            command = click.get_current_context(silent=True)
            name = command.command_path if command is not None else "this command"
            unset = ("without --url" if self.url_given_as == "--url"
                     else "with CORRAL_URL unset")
            raise InvalidRequest(
                f"`{name}` works on the database itself (it has no HTTP form), but "
                f"{self.url_given_as} names the server {self.url}: run it where the database "
                f"is (on the server's host), {unset}, and with --database-url or --config "
                "naming the database")
        return self.settings.database_url

    def engine(self, *, beside_server: bool = False):  # type: ignore[no-untyped-def]
        """The engine on the database (see :attr:`database_url`);
        ``beside_server``: for a command that talks to a server itself and
        works on the database beside it (``corral simulate``)."""
        from corral.app import build_engine

        if not beside_server:
            self.database_url  # noqa: B018 (refuses a named server)
        return build_engine(self.settings)

    def reads(self):  # type: ignore[no-untyped-def]
        """Reads for a command that only looks: on the bare driver where the
        database URL allows (several times faster to start than building the
        engine), else through the engine's store."""
        from corral.store import open_reader

        reader = open_reader(self.database_url)
        if reader is None:
            return self.engine().reads
        from corral.engine.reads import Reads
        from corral.machines import MachineSet, load_definitions

        click.get_current_context().call_on_close(reader.close)
        reader.require_current()
        return Reads(MachineSet(load_definitions(Path(self.settings.statemachines_dir))),
                     reader.session)


def actor() -> str:
    """Who the history records for a local command: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

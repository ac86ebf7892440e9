"""The ``corral`` command: the root group, its global options, its error handling.

The commands themselves live in :mod:`corral.cli.commands`, one module per
domain, each adding its commands to the root group through ``register``; a new
domain is its own module plus one line in :data:`COMMAND_MODULES`.

Errors a user can cause print one line on stderr and exit non-zero (see the
exit-code table in ``docs/operations.md``); a traceback is always a bug.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

import click

from corral.cli.context import CliContext
from corral.errors import CorralError
from corral.jobs.spec import SpecError
from corral.logs import configure_logging


class CorralGroup(click.Group):
    """Turns every user-facing error into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpecError as exc:
            # One problem per line: a spec often has several.
            click.echo("error: invalid job spec:", err=True)
            for problem in exc.problems:
                click.echo(f"  {problem}", err=True)
            sys.exit(exc.exit_code)
        except CorralError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", metavar="FILE",
              help="Configuration file (default: $CORRAL_CONFIG, else ./corral.toml).")
@click.option("--database-url", metavar="URL", help="Overrides database_url.")
@click.option("--statemachines", "statemachines_dir", metavar="DIR",
              help="Directory of state machine definitions (overrides statemachines_dir).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--url", envvar="CORRAL_URL", metavar="URL",
              help="Talk to a Corral server instead of the database (board, pool, job, "
                   "lease, console and stream commands; the others refuse it); the token "
                   "comes from $CORRAL_TOKEN.")
@click.version_option(package_name="corral")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, database_url: str | None,
        statemachines_dir: str | None, log_level: str | None, url: str | None) -> None:
    """Corral: persistent state machines for hardware test labs."""
    # Commands other than serve/sweep only log problems, on stderr.
    configure_logging(log_level or "warning", "auto")
    from_env = ctx.get_parameter_source("url") is click.core.ParameterSource.ENVIRONMENT
    ctx.obj = CliContext(config_file, {"database_url": database_url,
                                       "statemachines_dir": statemachines_dir,
                                       "log_level": log_level}, url=url,
                         url_given_as="CORRAL_URL" if from_env else "--url")


# The modules of corral.cli.commands, one per domain; each adds its commands to
# the root group in ``register(root)`` (`corral --help` lists them by name).
COMMAND_MODULES = (
    "boards",
    "bootres",
    "consoles",
    "db",
    "definitions",
    "jobs",
    "lab",
    "leases",
    "mo",
    "pools",
    "serve",
    "simulate",
    "stream",
    "tokens",
    "webhooks",
)
for _name in COMMAND_MODULES:
    import_module(f"corral.cli.commands.{_name}").register(cli)


def main() -> None:
    cli(prog_name="corral")


if __name__ == "__main__":
    main()

"""``corral job``: the shared machine commands (but ``show``, which adds a job's
pool, action and failure), plus submitting, validating, cancelling and
signalling jobs."""

from __future__ import annotations

from typing import Any

import click

from corral.cli.commands.machines import add_machine_commands
from corral.cli.context import CliContext
from corral.cli.output import print_machine, to_json
from corral.jobs.spec import SpecError


def register(root: click.Group) -> None:
    root.add_command(job)


@click.group()
def job() -> None:
    """Jobs: submit specs, follow them, cancel them, signal them."""


add_machine_commands(job, "job", show=False)


@job.command("submit")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--maize", is_flag=True, help="FILE is a Maize snapshot document "
              '({"snapshot": {"release": ...}}): submit an OS override job for it.')
@click.option("--fabric", help="With --maize: only pools of this fabric.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def job_submit(obj: CliContext, file: Any, maize: bool, fabric: str | None,
               as_json: bool) -> None:
    """Submit a job spec (YAML or JSON; FILE may be - for stdin); prints the job id."""
    result = obj.jobs().submit(_read_spec(file), maize, fabric)
    click.echo(to_json(result) if as_json else f"{result['name']}: {result['state']}")


@job.command("validate")
@click.argument("file", type=click.File("r", encoding="utf-8"))
def job_validate(file: Any) -> None:
    """Check a job spec (YAML or JSON; FILE may be - for stdin) as submitting it
    would, without a database or server; prints `valid`, or every problem and
    exits 2."""
    from corral.jobs import versions

    versions.load(_read_spec(file))
    click.echo("valid")


def _read_spec(file: Any) -> str:
    try:
        return str(file.read())
    except UnicodeDecodeError as exc:
        raise SpecError([f"(document): not UTF-8 text (byte {exc.start})"]) from None


@job.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def job_show(obj: CliContext, name: str, as_json: bool) -> None:
    """Show a job: its state, spec, progress and outcome."""
    doc = obj.jobs().show(name)
    if as_json:
        click.echo(to_json(doc))
        return
    print_machine("job", doc)
    click.echo(f"pool:      {doc['pool'] or '-'}")
    current = doc.get("current")
    if current:
        click.echo(f"action:    {current['stage']} / {current['action']} ({current['type']}, "
                   f"attempt {current['attempt']})")
    for lease in doc.get("leases") or []:
        what = "holds" if lease["held"] else "waits for"
        boards = ", ".join(lease["boards"]) or "-"
        until = f" until {lease['expires_at']}" if lease.get("expires_at") else ""
        click.echo(f"lease:     {what} {lease['id']} ({lease['state']}; boards {boards}){until}")
    if doc.get("failure_comment"):
        click.echo(f"failure:   {doc['failure_comment']}")


@job.command("cancel")
@click.argument("name")
@click.option("--reason", help="Recorded in the history and as the failure comment.")
@click.pass_obj
def job_cancel(obj: CliContext, name: str, reason: str | None) -> None:
    """Cancel a job that has not ended; its pools and leases are released."""
    result = obj.jobs().cancel(name, reason)
    click.echo(f"{name}: {result['from_state']} -> {result['to_state']}")


@job.command("signal")
@click.argument("name")
@click.argument("event")
@click.pass_obj
def job_signal(obj: CliContext, name: str, event: str) -> None:
    """Send EVENT to a job whose waitForEventAction waits for it."""
    result = obj.jobs().signal(name, event)
    click.echo(f"{name}: {result['from_state']} -> {result['to_state']}")


@job.command("spec")
@click.argument("name")
@click.option("--api-version", help="Convert to this version (refused if it would lose "
              "information) instead of printing the spec as submitted.")
@click.pass_obj
def job_spec(obj: CliContext, name: str, api_version: str | None) -> None:
    """Print a job's spec as submitted."""
    click.echo(obj.jobs().spec(name, api_version)["text"], nl=False)

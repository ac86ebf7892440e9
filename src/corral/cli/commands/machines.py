"""The operator commands every machine kind shares: list, show, explain, history,
event, force-state.

Boards, pools and jobs are all database-backed state machines, so ``corral
board``, ``corral pool`` and ``corral job`` get the same verbs from
:func:`add_machine_commands`; each reads and writes the database, or a server
given ``--url``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from corral.cli.context import CliContext
from corral.cli.output import console, print_machine, since, to_json


def add_machine_commands(group: click.Group, kind: str, *, show: bool = True) -> None:
    """The operator commands every machine kind shares: list, show, history, event,
    force-state. They read and write the database, or a server given --url."""
    group.add_command(_list_command(kind))
    if show:
        group.add_command(_show_command(kind))
    group.add_command(_explain_command(kind))
    group.add_command(_history_command(kind))
    group.add_command(_event_command(kind))
    group.add_command(_force_state_command(kind))


def _list_command(kind: str) -> click.Command:
    @click.command("list", help=f"List {kind}s.")
    @click.option("--state", "states", multiple=True, help="Only machines in this state "
                  "(repeatable).")
    @click.option("--failed", is_flag=True, help="Only machines in a failed state.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def list_cmd(obj: CliContext, states: tuple[str, ...], failed: bool, as_json: bool) -> None:
        pages = obj.boards(kind).find(list(states) or None, failed)
        # Printed page by page as they arrive: a fleet of any size starts
        # printing at once and is never held in memory whole.
        if as_json:
            _print_json_pages(pages)
        else:
            _print_listing(kind, pages)
    return list_cmd


def _print_json_pages(pages: Iterable[list[dict[str, Any]]]) -> None:
    """One JSON array, a machine a line, written as the pages arrive."""
    count = 0
    click.echo("[", nl=False)
    for page in pages:
        for d in page:
            click.echo(("," if count else "") + "\n" + to_json(d, compact=True), nl=False)
            count += 1
    click.echo("\n]" if count else "]")


def _print_listing(kind: str, pages: Iterable[list[dict[str, Any]]]) -> None:
    """The machines as columns (the first page sets their widths), then a count."""
    count = 0
    titles = ("NAME", "STATE", "ENTERED", "TIMEOUT", "EPOCH", "COUNTERS")
    widths: list[int] | None = None
    colour = sys.stdout.isatty()
    for page in pages:
        now = datetime.now(UTC)
        rows = [(d["name"], d["state"], since(d["state_entered_at"], now),
                 since(d["deadline"], now), str(d["epoch"]),
                 " ".join(f"{k}={v}" for k, v in sorted(d["counters"].items())) or "-",
                 d["failed"]) for d in page]
        if widths is None:  # the first page sets the columns for all
            widths = [max([len(t), *(len(r[i]) for r in rows)])
                      for i, t in enumerate(titles)]
            click.echo(_columns(titles, widths, colour and None))
        # Plain lines, not a rich table: thousands of rows print at once.
        click.echo("\n".join(_columns(cells, widths, colour and is_failed)
                              for *cells, is_failed in rows))
        count += len(rows)
    if widths is None:
        click.echo("  ".join(titles))
    click.echo(f"{count} {kind}{'' if count == 1 else 's'}")


def _columns(cells: Any, widths: list[int], failed: bool | None) -> str:
    """One line of a listing: columns padded to ``widths``, the state in red
    for a failed machine (``failed`` true; None: the header, in bold)."""
    padded = [str(c).ljust(w) for c, w in zip(cells, widths, strict=True)]
    if failed is None:
        padded = [click.style(c, bold=True) for c in padded]
    elif failed:
        padded[1] = click.style(padded[1], fg="red")
    return "  ".join(padded).rstrip()


def _show_command(kind: str) -> click.Command:
    @click.command("show", help=f"Show one {kind}.")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def show_cmd(obj: CliContext, name: str, as_json: bool) -> None:
        doc = obj.boards(kind).show(name)
        if as_json:
            click.echo(to_json(doc))
            return
        print_machine(kind, doc)
    return show_cmd


def _explain_command(kind: str) -> click.Command:
    @click.command("explain", help=f"Why a {kind} is where it is: the transition into its "
                   "state, its timeout, counters, operations and the events you may fire.")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def explain_cmd(obj: CliContext, name: str, as_json: bool) -> None:
        doc = obj.boards(kind).explain(name)
        if as_json:
            click.echo(to_json(doc))
            return
        _print_explain(doc)
    return explain_cmd


def _print_explain(doc: dict[str, Any]) -> None:
    click.echo(doc["summary"])
    click.echo("")
    entered = doc.get("entered")
    if entered:
        click.echo(f"entered:    {entered['at']} by {entered['event']} ({entered['source']}"
                   f"{', ' + entered['actor'] if entered['actor'] else ''})"
                   f"{': ' + entered['reason'] if entered['reason'] else ''}")
    timeout = doc.get("timeout")
    if timeout:
        remaining = timeout.get("remaining_seconds")
        click.echo(f"timeout:    {timeout.get('seconds', timeout.get('deadline_var'))} s, then "
                   f"{timeout['then']}"
                   + (f" (in {remaining:.0f} s)" if remaining is not None else ""))
    else:
        click.echo("timeout:    none")
    for counter in doc["counters"]:
        mark = "  <- this state" if counter["this_state"] else ""
        click.echo(f"counter:    {counter['name']} {counter['value']}/{counter['max']}, then "
                   f"{counter['failure']} (counts {', '.join(counter['counts'])}){mark}")
    for op in doc["waiting_operations"]:
        click.echo(f"waiting:    {op['kind']} #{op['id']} {op['status']}, attempt "
                   f"{op['attempts']}" + (f": {op['error']}" if op["error"] else ""))
    for op in doc["last_operations"]:
        outcome = op["error"] or json.dumps(op["result"], default=str)[:200]
        click.echo(f"last {op['kind']}: #{op['id']} {op['status']} "
                   f"{op['finished_at'] or op['created_at']}: {outcome}")
    click.echo(f"you may:    {', '.join(doc['allowed_events']) or '-'}")


def _history_command(kind: str) -> click.Command:
    @click.command("history", help=f"Show a {kind}'s history, newest last.")
    @click.argument("name")
    @click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
    @click.option("--before", "before_id", type=click.IntRange(1), help="Only entries older "
                  "than this id (paging).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def history_cmd(obj: CliContext, name: str, limit: int, before_id: int | None,
                    as_json: bool) -> None:
        entries = obj.boards(kind).history(name, limit, before_id)
        if as_json:
            click.echo(to_json(entries))
            return
        table = Table(box=None, pad_edge=False)
        for title in ("ID", "AT", "EVENT", "FROM", "TO", "SOURCE", "ACTOR", "REASON"):
            table.add_column(title)
        for e in reversed(entries):
            table.add_row(str(e["id"]), e["at"].strftime("%Y-%m-%d %H:%M:%S"), e["event"],
                          e["from_state"] or "-", e["to_state"], e["source"],
                          e["actor"] or "-", e["reason"] or "")
        console.print(table)
    return history_cmd


def _event_command(kind: str) -> click.Command:
    @click.command("event", help=f"Fire an event at a {kind}, as an operator.")
    @click.argument("name")
    @click.argument("event")
    @click.option("--payload", help="A JSON object passed with the event.")
    @click.option("--reason", help="Recorded in the history.")
    @click.pass_obj
    def event_cmd(obj: CliContext, name: str, event: str, payload: str | None,
                  reason: str | None) -> None:
        data = None
        if payload is not None:
            try:
                data = json.loads(payload)
            except json.JSONDecodeError as exc:
                raise click.BadParameter(f"not JSON: {exc.msg}", param_hint="--payload"
                                         ) from None
            if not isinstance(data, dict):
                raise click.BadParameter("must be a JSON object", param_hint="--payload")
        result = obj.boards(kind).fire(name, event, data, reason)
        click.echo(f"{name}: {result['from_state']} -> {result['to_state']} "
                   f"(epoch {result['epoch']})")
    return event_cmd


def _force_state_command(kind: str) -> click.Command:
    @click.command("force-state", help=f"Force a {kind} into STATE, running its entry "
                   "operations (Mozpool's state-change).")
    @click.argument("name")
    @click.argument("state")
    @click.option("--reason", required=True, help="Why; recorded in the history.")
    @click.option("--if-state", help="Only if the machine is currently in this state.")
    @click.pass_obj
    def force_cmd(obj: CliContext, name: str, state: str, reason: str,
                  if_state: str | None) -> None:
        result = obj.boards(kind).force_state(name, state, reason, if_state)
        click.echo(f"{name}: {result['from_state']} -> {result['to_state']} "
                   f"(epoch {result['epoch']})")
    return force_cmd

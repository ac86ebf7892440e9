"""How ``corral`` prints: JSON, relative times, tables, and one machine in full.

Several command modules print the same shapes (a machine shown by ``board
show`` and ``job show``, times as ``in 40s`` / ``3m ago``, ``--json``), so the
formatting lives here once.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console

# A pipe gets full-width rows instead of wrapped cells.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(type(o).__name__)


def to_json(value: Any, *, compact: bool = False) -> str:
    """JSON for people (indented), or ``compact``: one line, through the C
    encoder (an indented dump runs the pure-Python one, ten times slower:
    too slow for a list of thousands of machines)."""
    if compact:
        return json.dumps(value, default=_json_default, sort_keys=True,
                          separators=(", ", ": "))
    return json.dumps(value, default=_json_default, indent=2, sort_keys=True)


def since(moment: datetime | None, now: datetime) -> str:
    """``in 40s`` for a future moment, ``3m ago`` for a past one."""
    if moment is None:
        return "-"
    seconds = (moment - now).total_seconds()
    n = int(abs(seconds))
    text = f"{n}s" if n < 120 else f"{n // 60}m" if n < 7200 else f"{n // 3600}h"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def print_machine(kind: str, doc: dict[str, Any]) -> None:
    """One machine of ``kind`` in full, a field a line (``board show``, ``job show``)."""
    now = datetime.now(UTC)
    deadline = (f"{doc['deadline'].isoformat()} ({since(doc['deadline'], now)})"
                if doc["deadline"] else "-")
    click.echo(f"{kind}:     {doc['name']}")
    click.echo(f"state:     {doc['state']}{'  (FAILED)' if doc['failed'] else ''}")
    click.echo(f"entered:   {doc['state_entered_at'].isoformat()} "
               f"({since(doc['state_entered_at'], now)})")
    click.echo(f"timeout:   {deadline}")
    click.echo(f"epoch:     {doc['epoch']}")
    click.echo(f"counters:  {doc['counters'] or '-'}")
    # The events you may fire, then every event the state accepts, by its firers.
    click.echo(f"events:    {', '.join(doc['allowed_events']) or '-'}")
    by_firers: dict[str, list[str]] = {}
    for event, firers in (doc.get("accepted_events") or {}).items():
        by_firers.setdefault(", ".join(firers), []).append(event)
    accepts = "; ".join(f"{', '.join(events)} (by {firers})"
                        for firers, events in by_firers.items())
    click.echo(f"accepts:   {accepts or '-'}")
    for key, value in sorted(doc["attrs"].items()):
        click.echo(f"{key + ':':<10} {value}")
    for key, value in sorted(doc.get("vars", {}).items()):
        click.echo(f"{'vars.' + key + ':':<10} {value}")

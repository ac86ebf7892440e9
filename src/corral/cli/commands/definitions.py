"""``corral machines``: checking the state machine definitions and drawing them.

These commands read the ``statemachines`` directory only; the machines built
from it (boards, pools, jobs) have their own command groups.
"""

from __future__ import annotations

from pathlib import Path

import click

from corral.cli.context import CliContext


def register(root: click.Group) -> None:
    root.add_command(machines)


@click.group()
def machines() -> None:
    """State machine definitions."""


@machines.command("check")
@click.pass_obj
def machines_check(obj: CliContext) -> None:
    """Validate every definition in the statemachines directory."""
    from corral.app import build_handlers, check_operations, load_machines
    from corral.bootres.netboot import NEEDS as NETBOOT_NEEDS
    from corral.jobs.service import NEEDS as JOB_NEEDS
    from corral.jobs.service import JobOperations
    from corral.machines.needs import check_needs
    from corral.pools.service import NEEDS as POOL_NEEDS

    loaded = load_machines(obj.settings)
    check_operations(loaded, set(build_handlers(obj.settings)) | set(JobOperations.KINDS))
    check_needs(loaded, [POOL_NEEDS, *JOB_NEEDS, NETBOOT_NEEDS])
    for m in loaded:
        click.echo(f"{m.definition.path}: {m.kind}: {len(m.definition.states)} states, "
                   f"{len(m.definition.transitions)} transitions: ok")


@machines.command("diagram")
@click.argument("kind")
@click.option("--update", "markdown", type=click.Path(dir_okay=False, path_type=Path),
              help="Rewrite the diagram between <!-- diagram:KIND --> markers in this file "
                   "instead of printing it.")
@click.pass_obj
def machines_diagram(obj: CliContext, kind: str, markdown: Path | None) -> None:
    """Print a mermaid diagram of a machine kind."""
    from corral.app import load_machines
    from corral.machines.diagram import mermaid, replace_block

    text = mermaid(load_machines(obj.settings)[kind].definition)
    if markdown is None:
        click.echo(text, nl=False)
        return
    markdown.write_text(replace_block(markdown.read_text(), kind, text))
    click.echo(f"updated the {kind} diagram in {markdown}")

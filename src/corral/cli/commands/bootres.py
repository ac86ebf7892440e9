"""``corral bootres``: importing boot resources from simplestreams sources and
listing the published winners."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from corral.cli.context import CliContext
from corral.cli.output import console, to_json
from corral.errors import CorralError


def register(root: click.Group) -> None:
    root.add_command(bootres)


@click.group()
def bootres() -> None:
    """Boot resources: import from simplestreams sources, list the winners."""


@bootres.command("import")
@click.option("--config", "config_file", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Sources, masks, sorting and storage (YAML or JSON).")
@click.pass_obj
def bootres_import(obj: CliContext, config_file: Path) -> None:
    """Import boot resources and publish the winners atomically.

    Any failure publishes nothing and leaves the current snapshot in place."""
    from corral.bootres.config import load_config
    from corral.bootres.importer import progress_bar, run_import

    config = load_config(config_file)
    db = obj.engine().store
    progress, done = progress_bar()
    try:
        result = run_import(config, db, progress=progress)
    finally:
        done()
    click.echo(f"published snapshot {result.snapshot}: {len(result.winners)} "
               f"arch/subarch/release, {result.objects} objects ({result.downloaded} "
               f"downloaded) under {config.storage}/current")


@bootres.command("list")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path),
              help="The import's storage (default: setting bootres_storage).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def bootres_list(obj: CliContext, storage: Path | None, as_json: bool) -> None:
    """Show the winner for every arch/subarch/release of the current snapshot."""
    from corral.bootres.store import Storage

    root = storage or Path(obj.settings.bootres_storage)
    manifest = Storage(root).current_manifest()
    winners = manifest["winners"] if manifest else []
    if as_json:
        click.echo(to_json(winners))
        return
    if manifest is None:
        raise CorralError(f"nothing is published under {root}; run `corral bootres import`")
    table = Table(box=None, pad_edge=False)
    for title in ("ARCH", "SUBARCH", "RELEASE", "PRODUCT", "VERSION", "SOURCE", "ITEMS"):
        table.add_column(title)
    for w in winners:
        table.add_row(w["arch"], w["subarch"], w["release"], w["product"], w["version"],
                      w["source"], " ".join(sorted(w["items"])))
    console.print(table)

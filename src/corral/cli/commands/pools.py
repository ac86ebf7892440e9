"""``corral pool``: the shared machine commands, plus fleets, assignments of pools
to jobs, and OS overrides through the Maintenance Orchestrator."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table

from corral.cli.commands.machines import add_machine_commands
from corral.cli.context import CliContext
from corral.cli.output import console, since, to_json


def register(root: click.Group) -> None:
    root.add_command(pool)


@click.group()
def pool() -> None:
    """Pools: fleets, assignments to jobs, OS overrides through MO."""


add_machine_commands(pool, "pool")


@pool.command("create-fleet")
@click.option("--fabric", required=True, help="The fabric, e.g. f1.")
@click.option("--count", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.pass_obj
def pool_create_fleet(obj: CliContext, fabric: str, count: int) -> None:
    """Create testbed-cert-pool-{1..COUNT}-{FABRIC} (rampClass CERTIFICATION); existing
    pools keep their state."""
    created = obj.pools().create_fleet(fabric, count)
    click.echo(f"{len(created)} pools created, {count - len(created)} already existed")


@pool.command("acquire")
@click.argument("name", required=False)
@click.option("--job", "job", required=True, help="The job run id that takes the pool(s).")
@click.option("--count", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Without NAME: how many free pools to take (all or none).")
@click.option("--fabric", help="Without NAME: only pools of this fabric.")
@click.pass_obj
def pool_acquire(obj: CliContext, name: str | None, job: str, count: int,
                 fabric: str | None) -> None:
    """Take pool NAME (or any free ones) for a job; a job may re-take its own pool."""
    held = obj.pools().acquire(job, name, count, fabric)
    for pool_name in held["pools"]:
        note = "" if pool_name in held["new"] else " (already held)"
        click.echo(f"{pool_name}: held by {held['job_run_id']}{note}")


@pool.command("release")
@click.option("--job", "job", required=True, help="The job run id whose pools to free.")
@click.option("--reason", help="Recorded in each pool's history.")
@click.pass_obj
def pool_release(obj: CliContext, job: str, reason: str | None) -> None:
    """Free every pool a job holds."""
    released = obj.pools().release(job, reason)
    click.echo(f"released {len(released)} pool(s) of {job}"
               + (f": {', '.join(sorted(released))}" if released else ""))


@pool.command("override")
@click.argument("name")
@click.option("--os-version", required=True, help="The OS version MO rolls out, e.g. "
              "azurelinux3-test-x86_64-r11.")
@click.option("--job", "job", required=True, help="The job run id; it takes the pool if free.")
@click.option("--ttl", type=click.IntRange(1), help="Seconds the override lasts at MO "
              "(default: setting mo_override_ttl).")
@click.pass_obj
def pool_override(obj: CliContext, name: str, os_version: str, job: str,
                  ttl: int | None) -> None:
    """Start an OS override of pool NAME through MO; follow it with `pool show`."""
    result = obj.pools().override(name, job, os_version, ttl)
    click.echo(f"{name}: {result['from_state']} -> {result['to_state']} "
               f"(epoch {result['epoch']})")


@pool.command("assignments")
@click.option("--job", "job", help="Only this job's pools.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def pool_assignments(obj: CliContext, job: str | None, as_json: bool) -> None:
    """Which job holds which pool."""
    rows = obj.pools().assignments(job)
    if as_json:
        click.echo(to_json(rows))
        return
    table = Table(box=None, pad_edge=False)
    for title in ("POOL", "JOB", "SINCE"):
        table.add_column(title)
    now = datetime.now(UTC)
    for r in rows:
        table.add_row(r["pool"], r["job_run_id"], since(r["assigned_at"], now))
    console.print(table)

"""The ``corral`` command.

Errors a user can cause print one line on stderr and exit non-zero (see the
exit-code table in ``docs/operations.md``); a traceback is always a bug.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from corral.cli.clients import (
    Boards,
    LocalBoards,
    LocalJobs,
    LocalPools,
    RemoteBoards,
    RemoteJobs,
    RemotePools,
)
from corral.cli.signals import wait_for_stop_signal
from corral.config import Settings, load_settings
from corral.errors import CorralError, NotFound
from corral.jobs.spec import SpecError
from corral.logs import configure_logging

# How often `corral serve` (worker roles) forgets expired idempotency keys.
IDEMPOTENCY_EXPIRY_INTERVAL = 60.0
# How often `corral serve` (worker roles) prunes by the retention settings.
PRUNE_INTERVAL = 300.0


def retention(settings: Settings) -> dict[str, timedelta | None]:
    """The ages :meth:`Engine.prune` takes, from the retention settings."""
    return {"history_older_than": (timedelta(days=settings.history_retention_days)
                                   if settings.history_retention_days else None),
            "operations_older_than": (timedelta(days=settings.operation_retention_days)
                                      if settings.operation_retention_days else None)}

# A pipe gets full-width rows instead of wrapped cells.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


@dataclass
class CliContext:
    config_file: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    _settings: Settings | None = None

    def override(self, name: str, value: Any) -> None:
        """Apply a command's own option over the configuration (before first use)."""
        self.overrides[name] = value
        self._settings = None

    def boards(self, kind: str) -> Boards:
        """The database's machines, or a server's when --url / CORRAL_URL is given."""
        if self.url:
            return RemoteBoards(self.url, os.environ.get("CORRAL_TOKEN"), kind)
        return LocalBoards(self.reads(), self.engine, kind, _actor())

    def jobs(self) -> LocalJobs | RemoteJobs:
        if self.url:
            return RemoteJobs(self.url, os.environ.get("CORRAL_TOKEN"))
        return LocalJobs(self.engine(), _actor(), self.settings.mo_override_ttl)

    def pools(self) -> LocalPools | RemotePools:
        if self.url:
            return RemotePools(self.url, os.environ.get("CORRAL_TOKEN"))
        return LocalPools(self.engine(), _actor(), self.settings.mo_override_ttl)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file, overrides=self.overrides)
        return self._settings

    def engine(self):  # type: ignore[no-untyped-def]
        from corral.app import build_engine

        return build_engine(self.settings)

    def reads(self):  # type: ignore[no-untyped-def]
        """Reads for a command that only looks: on the bare driver where the
        database URL allows (several times faster to start than building the
        engine), else through the engine's store."""
        from corral.store import open_reader

        reader = open_reader(self.settings.database_url)
        if reader is None:
            return self.engine().reads
        from corral.engine.reads import Reads
        from corral.machines import MachineSet, load_definitions

        click.get_current_context().call_on_close(reader.close)
        reader.require_current()
        return Reads(MachineSet(load_definitions(Path(self.settings.statemachines_dir))),
                     reader.session)


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


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _columns(cells: Any, widths: list[int], failed: bool | None) -> str:
    """One line of a listing: columns padded to ``widths``, the state in red
    for a failed machine (``failed`` true; None: the header, in bold)."""
    padded = [str(c).ljust(w) for c, w in zip(cells, widths, strict=True)]
    if failed is None:
        padded = [click.style(c, bold=True) for c in padded]
    elif failed:
        padded[1] = click.style(padded[1], fg="red")
    return "  ".join(padded).rstrip()


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(type(o).__name__)


def _json(value: Any, *, compact: bool = False) -> str:
    """JSON for people (indented), or ``compact``: one line, through the C
    encoder (an indented dump runs the pure-Python one, ten times slower:
    too slow for a list of thousands of machines)."""
    if compact:
        return json.dumps(value, default=_json_default, sort_keys=True,
                          separators=(", ", ": "))
    return json.dumps(value, default=_json_default, indent=2, sort_keys=True)


@click.group(cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", metavar="FILE",
              help="Configuration file (default: $CORRAL_CONFIG, else ./corral.toml).")
@click.option("--database-url", metavar="URL", help="Overrides database_url.")
@click.option("--statemachines", "statemachines_dir", metavar="DIR",
              help="Directory of state machine definitions (overrides statemachines_dir).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--url", envvar="CORRAL_URL", metavar="URL",
              help="Talk to a Corral server instead of the database (board commands); the "
                   "token comes from $CORRAL_TOKEN.")
@click.version_option(package_name="corral")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, database_url: str | None,
        statemachines_dir: str | None, log_level: str | None, url: str | None) -> None:
    """Corral: persistent state machines for hardware test labs."""
    # Commands other than serve/sweep only log problems, on stderr.
    configure_logging(log_level or "warning", "auto")
    ctx.obj = CliContext(config_file, {"database_url": database_url,
                                       "statemachines_dir": statemachines_dir,
                                       "log_level": log_level}, url=url)


# ------------------------------------------------------------------ db


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(obj: CliContext) -> None:
    """Create or migrate the schema to the newest revision."""
    from corral.store import open_store

    store = open_store(obj.settings.database_url)
    store.upgrade()
    click.echo(f"database at revision {store.current_revision()}")


@db.command("current")
@click.pass_obj
def db_current(obj: CliContext) -> None:
    """Show the schema revision of the database and the one this Corral needs."""
    from corral.store import head_revision, open_store

    store = open_store(obj.settings.database_url)
    click.echo(f"current: {store.current_revision() or 'none'}  head: {head_revision()}")


# ------------------------------------------------------------------ serve / sweep


@cli.command()
@click.option("--simulate", is_flag=True,
              help="Run operations (power, ping, poll, PXE) on the simulated backend; "
                   "`corral simulate boards` plays the boards themselves.")
@click.option("--role", type=click.Choice(["all", "api", "worker"]), default="all",
              show_default=True,
              help="api: the HTTP service only; worker: sweeps and operations only.")
@click.option("--listen", metavar="HOST:PORT", help="Where the HTTP service listens "
              "(setting listen, default 127.0.0.1:8080).")
@click.option("--processes", type=click.IntRange(1, 64), help="API processes sharing the "
              "address (setting http_processes, default 1).")
@click.pass_obj
def serve(obj: CliContext, simulate: bool, role: str, listen: str | None,
          processes: int | None) -> None:
    """Run the engine until SIGTERM or Ctrl-C: HTTP API, deadline sweeps, operation workers."""
    import structlog

    from corral.api.server import (
        COUNTS_MAX_AGE_INTERVALS,
        api_processes,
        metrics_registry,
        run_http,
    )
    from corral.app import build_handlers, build_worker, check_operations
    from corral.config import parse_listen
    from corral.engine.scheduler import build_scheduler

    if listen is not None:
        obj.override("listen", listen)
    if processes is not None:
        obj.override("http_processes", processes)
    settings = obj.settings
    parse_listen(settings.listen)
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("corral.serve")
    engine = obj.engine()
    serving_http = role in ("all", "api")
    # Extra API processes first, so that every process (this one too) counts
    # in Prometheus' multiprocess mode from its first event.
    extra = api_processes(settings) if serving_http else contextlib.nullcontext()
    with extra:
        registry = metrics_registry(
            engine, counts_max_age=COUNTS_MAX_AGE_INTERVALS * settings.state_count_interval)
        scheduler = None
        worker = None
        if role in ("all", "worker"):
            handlers = build_handlers(settings, simulate=simulate or None, engine=engine)
            check_operations(engine.machines, handlers)
            worker = build_worker(engine, settings, handlers)
            jobs: dict[str, tuple[Callable[[], object], float]] = {
                "sweep_timeouts": (lambda: engine.sweep_timeouts(batch=settings.sweep_batch,
                                                                 threads=settings.sweep_threads),
                                   settings.sweep_interval),
                "operations": (worker.dispatch, settings.operation_interval),
            }
            if settings.idempotency_key_hours:
                keep = timedelta(hours=settings.idempotency_key_hours)
                jobs["expire_idempotency_keys"] = (
                    lambda: engine.expire_idempotency_keys(keep), IDEMPOTENCY_EXPIRY_INTERVAL)
            jobs["count_states"] = (engine.refresh_state_counts,
                                    settings.state_count_interval)
            if engine.store.backend not in ("mysql", "mariadb"):  # no stream horizon there
                from corral.webhooks import WebhookDelivery

                delivery = WebhookDelivery(
                    engine.store, engine.clock, owner=worker.owner,
                    timeout=settings.webhook_timeout, lease_seconds=settings.webhook_lease,
                    failing_after=settings.webhook_failing_after,
                    max_backoff=settings.webhook_max_backoff)
                jobs["webhooks"] = (delivery.deliver_pass, settings.webhook_interval)
            ages = retention(settings)
            if any(ages.values()):
                jobs["prune"] = (lambda: engine.prune(**ages), PRUNE_INTERVAL)
            if "job" in engine.machines:
                from corral.jobs.service import JobService

                scheduler_jobs = JobService(engine, default_ttl=settings.mo_override_ttl)
                jobs["dispatch_jobs"] = (scheduler_jobs.dispatch_pass,
                                         settings.job_dispatch_interval)
            scheduler = build_scheduler(jobs)
        if settings.group_commit_threads:
            engine.start_group_commit(threads=settings.group_commit_threads,
                                      max_batch=settings.group_commit_max_batch)
        if scheduler is not None:
            scheduler.start()
        log.info("serving", role=role,
                 database=engine.store.display_url,
                 listen=settings.listen if serving_http else None, owner=settings.owner,
                 simulate=simulate, kinds=engine.machines.kinds(),
                 http_processes=settings.http_processes if serving_http else 0)
        try:
            if serving_http:
                run_http(engine, settings, registry)
            else:
                received = wait_for_stop_signal()
                log.info("signal_received", signal=received.name)
        finally:
            log.info("stopping")
            if scheduler is not None:
                scheduler.shutdown(wait=True)
            if worker is not None:
                worker.shutdown(wait=True)
            engine.close()


@cli.command()
@click.option("--once", is_flag=True, required=True,
              help="Run one pass: fire every due timeout, then run every runnable operation.")
@click.option("--simulate", is_flag=True, help="Run operations on the simulated backend.")
@click.pass_obj
def sweep(obj: CliContext, once: bool, simulate: bool) -> None:
    """One sweep pass, for tests and cron."""
    from corral.app import build_handlers, build_worker, check_operations

    settings = obj.settings
    configure_logging(settings.log_level, settings.log_format)
    engine = obj.engine()
    handlers = build_handlers(settings, simulate=simulate or None, engine=engine)
    check_operations(engine.machines, handlers)
    fired = engine.sweep_timeouts(batch=settings.sweep_batch, threads=settings.sweep_threads)
    assigned = 0
    if "job" in engine.machines:
        from corral.jobs.service import JobService

        assigned = len(JobService(engine, default_ttl=settings.mo_override_ttl).dispatch_pass())
    ran = build_worker(engine, settings, handlers).run_pending()
    engine.refresh_state_counts()
    forgotten = 0
    if settings.idempotency_key_hours:
        forgotten = engine.expire_idempotency_keys(
            timedelta(hours=settings.idempotency_key_hours))
    click.echo(f"timeouts fired: {fired}, jobs assigned: {assigned}, operations run: {ran}, "
               f"idempotency keys forgotten: {forgotten}")


@cli.command()
@click.option("--once", is_flag=True, required=True,
              help="Prune now, then exit (worker processes prune every 5 minutes).")
@click.pass_obj
def prune(obj: CliContext, once: bool) -> None:
    """Delete history and finished operations past the retention settings.

    history_retention_days and operation_retention_days (0: keep everything);
    every machine keeps its newest history row."""
    settings = obj.settings
    ages = retention(settings)
    if not any(ages.values()):
        click.echo("nothing to prune: history_retention_days and operation_retention_days "
                   "are 0 (keep everything)")
        return
    pruned = obj.engine().prune(**ages)
    click.echo(f"history rows pruned: {pruned['history']}, operations pruned: "
               f"{pruned['operations']}")


@cli.command()
@click.option("--kind", "kinds", multiple=True, help="Only this machine kind (repeatable).")
@click.option("--name", "names", multiple=True, help="Only this machine (repeatable).")
@click.option("--state", "states", multiple=True, help="Only rows entering this state.")
@click.option("--event", "events", multiple=True, help="Only this event (repeatable).")
@click.option("--source", "sources", multiple=True,
              type=click.Choice(["callback", "timeout", "operation", "operator"]))
@click.option("--after", type=click.IntRange(0), help="Replay from after this history id "
              "(0: everything kept); without it, from now.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line.")
@click.pass_obj
def watch(obj: CliContext, kinds: tuple[str, ...], names: tuple[str, ...],
          states: tuple[str, ...], events: tuple[str, ...], sources: tuple[str, ...],
          after: int | None, as_json: bool) -> None:
    """Follow every change as it commits, in commit order (Ctrl-C stops).

    From the database, or from a server given --url (GET /api/v1/events),
    which it reconnects to after a dropped connection, resuming after the
    last change it printed: nothing is missed or printed twice."""
    filters = {"kind": list(kinds), "name": list(names), "state": list(states),
               "event": list(events), "source": list(sources)}
    if obj.url:
        from corral.cli.clients import follow_remote

        documents = follow_remote(obj.url, os.environ.get("CORRAL_TOKEN"), after=after,
                                  filters=filters)
    else:
        from corral.stream import follow

        documents = follow(obj.engine().store, after=after, filters=filters)
    try:
        for doc in documents:
            if as_json:
                click.echo(json.dumps(doc, separators=(",", ":"), default=str))
                continue
            who = f" {doc['actor']}" if doc.get("actor") else ""
            why = f": {doc['reason']}" if doc.get("reason") else ""
            click.echo(f"{doc['at'][:19]} #{doc['id']} {doc['kind']} {doc['name']} "
                       f"{doc['from_state'] or '-'} -> {doc['to_state']} {doc['event']} "
                       f"({doc['source']}{who}{why})")
    except KeyboardInterrupt:
        pass


@cli.group()
def webhook() -> None:
    """Webhook subscriptions: matching events POSTed, signed, at least once."""


@webhook.command("add")
@click.argument("url")
@click.option("--name", help="The subscription's name (default: hook-N).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="kind, name, state, event or source (repeatable; values of one key "
                   "are alternatives).")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A file whose first line is the HMAC key deliveries are signed with.")
@click.option("--from-start", is_flag=True, help="Deliver every event kept, not only new ones.")
@click.pass_obj
def webhook_add(obj: CliContext, url: str, name: str | None, filters: tuple[str, ...],
                secret_file: Path, from_start: bool) -> None:
    """Subscribe URL to the events matching the filters."""
    from corral.webhooks import add_subscription

    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--filter")
        parsed.setdefault(key, []).append(value)
    try:
        secret = secret_file.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise click.BadParameter(f"cannot read a secret from {secret_file}: "
                                 f"{getattr(exc, 'strerror', None) or 'empty or not text'}",
                                 param_hint="--secret-file") from None
    doc = add_subscription(obj.engine(), name=name, url=url, filters=parsed, secret=secret,
                           from_start=from_start)
    click.echo(f"webhook {doc['name']} -> {doc['url']} from history id {doc['cursor']}")


@webhook.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def webhook_list(obj: CliContext, as_json: bool) -> None:
    """Subscriptions with their status, cursor and last error (never the secret)."""
    with obj.engine().store.unit() as tx:
        hooks = tx.list_webhooks()
    if as_json:
        click.echo(_json(hooks))
        return
    for hook in hooks:
        click.echo(f"{hook['name']}  {hook['status']}  {hook['url']}  after #{hook['cursor']}  "
                   f"delivered {hook['delivered']}  filters {hook['filters'] or '-'}"
                   + (f"  last error: {hook['last_error']}" if hook["last_error"] else ""))
    if not hooks:
        click.echo("no webhooks")


@webhook.command("remove")
@click.argument("name")
@click.pass_obj
def webhook_remove(obj: CliContext, name: str) -> None:
    """Delete a subscription."""
    with obj.engine().store.unit() as tx:
        removed = tx.remove_webhook(name)
    if not removed:
        raise NotFound(f"no webhook {name!r}")
    click.echo(f"webhook {name} removed")


# ------------------------------------------------------------------ machines


@cli.group()
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


# ------------------------------------------------------------------ boards


def _since(moment: datetime | None, now: datetime) -> str:
    """``in 40s`` for a future moment, ``3m ago`` for a past one."""
    if moment is None:
        return "-"
    seconds = (moment - now).total_seconds()
    n = int(abs(seconds))
    text = f"{n}s" if n < 120 else f"{n // 60}m" if n < 7200 else f"{n // 3600}h"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _print_machine(kind: str, doc: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    deadline = (f"{doc['deadline'].isoformat()} ({_since(doc['deadline'], now)})"
                if doc["deadline"] else "-")
    click.echo(f"{kind}:     {doc['name']}")
    click.echo(f"state:     {doc['state']}{'  (FAILED)' if doc['failed'] else ''}")
    click.echo(f"entered:   {doc['state_entered_at'].isoformat()} "
               f"({_since(doc['state_entered_at'], now)})")
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


def add_machine_commands(group: click.Group, kind: str, *, show: bool = True) -> None:
    """The operator commands every machine kind shares: list, show, history, event,
    force-state. They read and write the database, or a server given --url."""

    @group.command("list")
    @click.option("--state", "states", multiple=True, help="Only machines in this state "
                  "(repeatable).")
    @click.option("--failed", is_flag=True, help="Only machines in a failed state.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def list_cmd(obj: CliContext, states: tuple[str, ...], failed: bool, as_json: bool) -> None:
        pages = obj.boards(kind).find(list(states) or None, failed)
        # Printed page by page as they arrive: a fleet of any size starts
        # printing at once and is never held in memory whole.
        count = 0
        if as_json:
            click.echo("[", nl=False)
            for page in pages:
                for d in page:
                    click.echo(("," if count else "") + "\n" + _json(d, compact=True),
                               nl=False)
                    count += 1
            click.echo("\n]" if count else "]")
            return
        titles = ("NAME", "STATE", "ENTERED", "TIMEOUT", "EPOCH", "COUNTERS")
        widths: list[int] | None = None
        colour = sys.stdout.isatty()
        for page in pages:
            now = datetime.now(UTC)
            rows = [(d["name"], d["state"], _since(d["state_entered_at"], now),
                     _since(d["deadline"], now), str(d["epoch"]),
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
    list_cmd.help = f"List {kind}s."

    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def show_cmd(obj: CliContext, name: str, as_json: bool) -> None:
        doc = obj.boards(kind).show(name)
        if as_json:
            click.echo(_json(doc))
            return
        _print_machine(kind, doc)
    if show:
        group.command("show", help=f"Show one {kind}.")(show_cmd)

    @group.command("explain")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def explain_cmd(obj: CliContext, name: str, as_json: bool) -> None:
        doc = obj.boards(kind).explain(name)
        if as_json:
            click.echo(_json(doc))
            return
        _print_explain(doc)
    explain_cmd.help = (f"Why a {kind} is where it is: the transition into its state, its "
                        "timeout, counters, operations and the events you may fire.")

    @group.command("history")
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
            click.echo(_json(entries))
            return
        table = Table(box=None, pad_edge=False)
        for title in ("ID", "AT", "EVENT", "FROM", "TO", "SOURCE", "ACTOR", "REASON"):
            table.add_column(title)
        for e in reversed(entries):
            table.add_row(str(e["id"]), e["at"].strftime("%Y-%m-%d %H:%M:%S"), e["event"],
                          e["from_state"] or "-", e["to_state"], e["source"],
                          e["actor"] or "-", e["reason"] or "")
        console.print(table)
    history_cmd.help = f"Show a {kind}'s history, newest last."

    @group.command("event")
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
    event_cmd.help = f"Fire an event at a {kind}, as an operator."

    @group.command("force-state")
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
    force_cmd.help = (f"Force a {kind} into STATE, running its entry operations "
                      "(Mozpool's state-change).")


@cli.group()
def board() -> None:
    """Boards: import, inspect, drive."""


add_machine_commands(board, "board")


@board.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def board_import(obj: CliContext, file: Path) -> None:
    """Create or update boards from a YAML inventory (all or nothing)."""
    from corral.inventory import load_inventory

    inventory = load_inventory(file)
    engine = obj.engine()
    created = engine.import_machines("board", inventory, actor=_actor(),
                                     reason=f"imported from {file.name}")
    click.echo(f"{len(created)} boards created, {len(inventory) - len(created)} updated")


@board.command("token")
@click.argument("name")
@click.pass_obj
def board_token(obj: CliContext, name: str) -> None:
    """Issue (or rotate) the token board NAME uses for callbacks; prints it once."""
    from corral.tokens import TokenStore

    click.echo(TokenStore(obj.engine().store).issue_for_board(name))


@cli.group()
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
        click.echo(_json(rows))
        return
    table = Table(box=None, pad_edge=False)
    for title in ("POOL", "JOB", "SINCE"):
        table.add_column(title)
    now = datetime.now(UTC)
    for r in rows:
        table.add_row(r["pool"], r["job_run_id"], _since(r["assigned_at"], now))
    console.print(table)


@cli.group()
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
    click.echo(_json(result) if as_json else f"{result['name']}: {result['state']}")


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
        click.echo(_json(doc))
        return
    _print_machine("job", doc)
    click.echo(f"pool:      {doc['pool'] or '-'}")
    current = doc.get("current")
    if current:
        click.echo(f"action:    {current['stage']} / {current['action']} ({current['type']}, "
                   f"attempt {current['attempt']})")
    if doc.get("failure_comment"):
        click.echo(f"failure:   {doc['failure_comment']}")


@job.command("cancel")
@click.argument("name")
@click.option("--reason", help="Recorded in the history and as the failure comment.")
@click.pass_obj
def job_cancel(obj: CliContext, name: str, reason: str | None) -> None:
    """Cancel a job that has not ended; its pools are released."""
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


@cli.group()
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
        click.echo(_json(winners))
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


@cli.group()
def token() -> None:
    """Operator tokens for the HTTP API."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True,
              help="viewer reads; operator also fires events and forces states; admin also "
                   "retires boards.")
@click.pass_obj
def token_create(obj: CliContext, name: str, role: str) -> None:
    """Create (or rotate) operator token NAME; prints it once."""
    from corral.tokens import TokenStore

    click.echo(TokenStore(obj.engine().store).issue(name, role))


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def token_list(obj: CliContext, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    from corral.tokens import TokenStore

    rows = TokenStore(obj.engine().store).list()
    docs = [{"name": r.name, "role": r.role, "board": r.board, "created_at": r.created_at,
             "revoked_at": r.revoked_at} for r in rows]
    if as_json:
        click.echo(_json(docs))
        return
    table = Table(box=None, pad_edge=False)
    for title in ("NAME", "ROLE", "CREATED", "REVOKED"):
        table.add_column(title)
    for r in rows:
        table.add_row(r.name, r.role, r.created_at.strftime("%Y-%m-%d %H:%M"),
                      r.revoked_at.strftime("%Y-%m-%d %H:%M") if r.revoked_at else "-")
    console.print(table)


@token.command("revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(obj: CliContext, name: str) -> None:
    """Revoke token NAME (a board's is named board:NAME)."""
    from corral.tokens import TokenStore

    TokenStore(obj.engine().store).revoke(name)
    click.echo(f"revoked {name}")


@cli.group()
def simulate() -> None:
    """Simulated lab hardware."""


@simulate.command("boards")
@click.option("--count", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--prefix", default="sim-", show_default=True,
              help="Boards are named PREFIX0001, PREFIX0002, ...")
@click.option("--url", "server", metavar="URL", envvar="CORRAL_URL",
              default="http://127.0.0.1:8080", show_default=True,
              help="The Corral server the boards report to.")
@click.option("--seconds", type=float, help="Stop after this long (default: until Ctrl-C).")
@click.pass_obj
def simulate_boards(obj: CliContext, count: int, prefix: str, server: str,
                    seconds: float | None) -> None:
    """Play COUNT boards reporting their boot progress over HTTP.

    Boards missing from the database are created; each gets a fresh board token
    (issued through the database, so run this beside the server). The
    reimages they ask for now and then go through an operator token
    (``simulated-lab``), as a lab's test jobs would: a board may not order
    its own reimage.
    """
    import asyncio

    from corral.simulate.boards import BoardBehaviour, run_boards
    from corral.tokens import TokenStore

    settings = obj.settings
    engine = obj.engine()
    names = [f"{prefix}{i:04d}" for i in range(1, count + 1)]
    existing = {row.name for row in engine.list_machines("board")}
    missing = {n: {"arch": "amd64", "subarch": "generic"} for n in names if n not in existing}
    if missing:
        engine.import_machines("board", missing, actor="simulator",
                               reason="created by corral simulate boards")
    tokens = TokenStore(engine.store)
    issued = {n: tokens.issue_for_board(n) for n in names}
    lab_token = tokens.issue("simulated-lab", "operator")
    behaviour = BoardBehaviour(boot_seconds=settings.sim_boot_seconds,
                               install_seconds=settings.sim_install_seconds,
                               install_failure=settings.sim_install_failure,
                               reimage_rate=settings.sim_reimage_rate, seed=settings.sim_seed)

    async def main() -> Counter[str]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if seconds is not None:
            loop.call_later(seconds, stop.set)
        return await run_boards(server, issued, behaviour, stop, lab_token=lab_token)

    click.echo(f"{count} simulated boards reporting to {server}", err=True)
    tally = asyncio.run(main())
    click.echo(" ".join(f"{k}={v}" for k, v in sorted(tally.items())) or "nothing to report")


@cli.command("mo-sim")
@click.option("--listen", default="127.0.0.1:50051", show_default=True, metavar="HOST:PORT")
@click.option("--nodes-per-pool", type=click.IntRange(1, 10_000), default=10,
              show_default=True)
@click.option("--batch", type=click.IntRange(1), default=2, show_default=True,
              help="Nodes that take an override per tick.")
@click.option("--tick", type=click.FloatRange(0.001), default=1.0, show_default=True,
              help="Seconds between rollout steps.")
@click.option("--unavailable-rate", type=click.FloatRange(0, 1), default=0.0,
              show_default=True, help="Share of calls answered UNAVAILABLE.")
@click.option("--stuck-nodes", type=click.IntRange(0), default=0, show_default=True,
              help="Nodes per pool that never leave their version.")
@click.option("--wrong-version-nodes", type=click.IntRange(0), default=0, show_default=True,
              help="Nodes per pool that report a different version.")
@click.option("--seed", type=int, default=0, show_default=True)
def mo_sim(listen: str, nodes_per_pool: int, batch: int, tick: float,
           unavailable_rate: float, stuck_nodes: int, wrong_version_nodes: int,
           seed: int) -> None:
    """Run a simulated Maintenance Orchestrator (gRPC) until SIGTERM or Ctrl-C."""
    from corral.config import parse_listen
    from corral.mo.simulator import Faults, MoSimulator, serve_simulator

    parse_listen(listen, "--listen")
    simulator = MoSimulator(nodes_per_pool=nodes_per_pool, batch=batch, tick=tick, seed=seed,
                            faults=Faults(unavailable_rate=unavailable_rate,
                                          stuck_nodes=stuck_nodes,
                                          wrong_version_nodes=wrong_version_nodes))
    try:
        server, port = serve_simulator(simulator, listen)
    except (OSError, RuntimeError) as exc:
        raise CorralError(f"cannot listen on {listen}: {exc}") from None
    click.echo(f"simulated MO listening on port {port}", err=True)
    wait_for_stop_signal()
    server.stop(grace=2).wait()


def main() -> None:
    cli(prog_name="corral")


# ------------------------------------------------------------------ lab


@cli.group()
def lab() -> None:
    """A lab of QEMU boards that netboot what Corral writes (see docs/lab.md)."""


@lab.command("up")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/lab"), show_default=True,
              help="Where the lab's files, disks and database live.")
@click.option("--boards", type=click.IntRange(1, 250), default=3, show_default=True,
              help="How many boards (BIOS, UEFI and iPXE, in turn).")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Where Corral's HTTP service listens (the boards reach it as 10.0.2.2).")
@click.option("--accel", type=click.Choice(["auto", "tcg", "kvm"]), default="auto",
              show_default=True,
              help="QEMU's accelerator; auto: KVM where a probe shows iPXE runs under it, "
                   "else TCG.")
@click.pass_obj
def lab_up(obj: CliContext, directory: Path, boards: int, listen: str, accel: str) -> None:
    """Build the lab, start its boards and serve them until Ctrl-C.

    Sets up the boot root, the boot resources, the configured database and the
    inventory, then runs `corral serve` with pxe_root and boot_callback_url
    pointing at the lab. Reimage a board from another terminal: corral board
    event lab-bios-1 reimage.
    """
    import subprocess

    from corral.config import parse_listen
    from corral.lab import Lab

    _host, port = parse_listen(listen, "--listen")
    the_lab = Lab(directory, boards=boards, accel=accel)
    the_lab.build()
    # The configured database, so that `corral board ...` in another terminal sees the lab.
    env = {**os.environ, **the_lab.settings(port),
           "CORRAL_DATABASE_URL": obj.settings.database_url}
    corral = [sys.executable, "-m", "corral.cli.main"]
    for args in (["db", "upgrade"],
                 ["bootres", "import", "--config", str(the_lab.directory / "import.yaml")],
                 ["board", "import", str(the_lab.inventory)]):
        done = subprocess.run([*corral, *args], env=env, check=False)
        if done.returncode != 0:
            raise CorralError(f"corral {' '.join(args)} failed (exit {done.returncode})")
    the_lab.start(port)
    click.echo(f"{len(the_lab.boards)} boards running under {the_lab.accel}; consoles in "
               f"{the_lab.directory / 'vm'}/*/console.log", err=True)
    server = subprocess.Popen([*corral, "serve", "--listen", listen], env=env)
    try:
        wait_for_stop_signal()
    finally:
        server.terminate()
        server.wait(timeout=30)
        the_lab.stop()


if __name__ == "__main__":
    main()

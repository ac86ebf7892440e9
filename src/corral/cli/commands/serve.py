"""``corral serve``, and the passes it repeats run once: ``sweep`` and ``prune``.

A server runs the HTTP API and, in its worker role, a scheduler of periodic
jobs (deadline sweeps, operations, webhook deliveries, job dispatch, expiring
idempotency keys, pruning, serial console capture); ``sweep --once`` and
``prune --once`` run one pass of the same work for tests and cron.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypedDict

import click

from corral.cli.context import CliContext
from corral.cli.signals import wait_for_stop_signal
from corral.config import LOG_FORMATS, Settings
from corral.logs import configure_logging

if TYPE_CHECKING:
    from corral.engine.core import Engine
    from corral.engine.worker import OperationWorker

# How often `corral serve` (worker roles) forgets expired idempotency keys.
IDEMPOTENCY_EXPIRY_INTERVAL = 60.0
# How often `corral serve` (worker roles) prunes by the retention settings.
PRUNE_INTERVAL = 300.0


# serve's and sweep's --log-format, over the log_format setting.
LOG_FORMAT = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS),
    help="console: readable and coloured; json: one object per line; auto: console on a "
         "terminal, else JSON (setting log_format, default auto).")


def register(root: click.Group) -> None:
    root.add_command(serve)
    root.add_command(sweep)
    root.add_command(prune)


class Retention(TypedDict):
    """The ages ``engine.sweeper.prune`` takes (None: keep that kind of row)."""

    history_older_than: timedelta | None
    operations_older_than: timedelta | None
    consoles_older_than: timedelta | None


def retention(settings: Settings) -> Retention:
    """The ages ``engine.sweeper.prune`` takes, from the retention settings."""
    return {"history_older_than": (timedelta(days=settings.history_retention_days)
                                   if settings.history_retention_days else None),
            "operations_older_than": (timedelta(days=settings.operation_retention_days)
                                      if settings.operation_retention_days else None),
            # Console text goes with the history that explains its boots.
            "consoles_older_than": (timedelta(days=settings.history_retention_days)
                                    if settings.history_retention_days else None)}


@click.command()
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
@LOG_FORMAT
@click.pass_obj
def serve(obj: CliContext, simulate: bool, role: str, listen: str | None,
          processes: int | None, log_format: str | None) -> None:
    """Run the engine until SIGTERM or Ctrl-C: HTTP API, deadline sweeps, operation workers."""
    import structlog

    from corral.api.server import (
        COUNTS_MAX_AGE_INTERVALS,
        api_processes,
        metrics_registry,
        run_http,
    )
    from corral.config import parse_listen

    if listen is not None:
        obj.override("listen", listen)
    if processes is not None:
        obj.override("http_processes", processes)
    if log_format is not None:
        obj.override("log_format", log_format)
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
        background = _Background(engine, settings, simulate) if role in ("all", "worker") \
            else None
        if settings.group_commit_threads:
            engine.group.start(threads=settings.group_commit_threads,
                                      max_batch=settings.group_commit_max_batch)
        if background is not None:
            background.start()
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
            if background is not None:
                background.stop()
            engine.close()


class _Background:
    """A worker process's background work: the operation workers (health
    checks apart), the periodic jobs and the console capture."""

    def __init__(self, engine: Engine, settings: Settings, simulate: bool) -> None:
        from corral.app import (
            build_handlers,
            build_workers,
            check_operations,
            check_power_libraries,
            console_capture,
        )
        from corral.engine.scheduler import build_scheduler

        self.handlers = build_handlers(settings, simulate=simulate or None, engine=engine)
        check_operations(engine.machines, self.handlers)
        check_power_libraries(engine)
        self.workers = build_workers(engine, settings, self.handlers)
        jobs = _worker_jobs(engine, settings, self.workers)
        self.capture = console_capture(engine, settings)
        if self.capture is not None:
            jobs["consoles"] = (self.capture.run_pass, settings.console_interval)
        self.scheduler = build_scheduler(jobs)

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        """Jobs first, then running health checks are told to end, then the
        workers and the capture."""
        from corral.app import HEALTH_CHECK

        self.scheduler.shutdown(wait=True)
        stop_checks = getattr(self.handlers.get(HEALTH_CHECK), "stop", None)
        if stop_checks is not None:
            stop_checks()
        for worker in self.workers:
            worker.shutdown(wait=True)
        if self.capture is not None:
            self.capture.shutdown()


def _worker_jobs(engine: Engine, settings: Settings, workers: list[OperationWorker]
                 ) -> dict[str, tuple[Callable[[], object], float]]:
    """The worker role's periodic jobs, by name: what to call and every how many seconds."""
    from corral.app import health_pass

    jobs: dict[str, tuple[Callable[[], object], float]] = {
        "sweep_timeouts": (lambda: engine.sweeper.sweep_timeouts(batch=settings.sweep_batch,
                                                         threads=settings.sweep_threads),
                           settings.sweep_interval),
    }
    for i, worker in enumerate(workers):
        jobs["operations" if i == 0 else f"operations_{i}"] = (worker.dispatch,
                                                             settings.operation_interval)
    if settings.idempotency_key_hours:
        keep = timedelta(hours=settings.idempotency_key_hours)
        jobs["expire_idempotency_keys"] = (
            lambda: engine.sweeper.expire_idempotency_keys(keep), IDEMPOTENCY_EXPIRY_INTERVAL)
    jobs["count_states"] = (engine.sweeper.refresh_state_counts,
                            settings.state_count_interval)
    from corral.webhook_targets import TargetPolicy
    from corral.webhooks import WebhookDelivery

    delivery = WebhookDelivery(
        engine.store, engine.clock, owner=settings.owner,
        timeout=settings.webhook_timeout, lease_seconds=settings.webhook_lease,
        failing_after=settings.webhook_failing_after,
        max_backoff=settings.webhook_max_backoff, policy=TargetPolicy.from_settings(settings))
    jobs["webhooks"] = (delivery.deliver_pass, settings.webhook_interval)
    ages = retention(settings)
    if any(ages.values()):
        jobs["prune"] = (lambda: engine.sweeper.prune(**ages), PRUNE_INTERVAL)
    if "job" in engine.machines:
        from corral.jobs.service import JobService

        scheduler_jobs = JobService(engine, default_ttl=settings.mo_override_ttl)
        jobs["dispatch_jobs"] = (scheduler_jobs.dispatch_pass,
                                 settings.job_dispatch_interval)
    if "lease" in engine.machines:
        from corral.app import job_leases
        from corral.leases.scheduler import LeaseScheduler

        jobs["leases"] = (LeaseScheduler(engine, settings).run_pass, settings.lease_interval)
        watcher = job_leases(engine, settings)
        if watcher is not None:
            jobs["job_leases"] = (watcher.watch_pass, settings.job_dispatch_interval)
    health = health_pass(engine, settings)
    if health is not None:
        jobs["health"] = (health.run_pass, settings.health_interval)
    return jobs


@click.command()
@click.option("--once", is_flag=True, required=True,
              help="Run one pass: fire every due timeout, then run every runnable operation.")
@click.option("--simulate", is_flag=True, help="Run operations on the simulated backend.")
@LOG_FORMAT
@click.pass_obj
def sweep(obj: CliContext, once: bool, simulate: bool, log_format: str | None) -> None:
    """One sweep pass, for tests and cron."""
    from corral.app import (
        build_handlers,
        build_worker,
        check_operations,
        check_power_libraries,
        health_pass,
    )

    if log_format is not None:
        obj.override("log_format", log_format)
    settings = obj.settings
    configure_logging(settings.log_level, settings.log_format)
    engine = obj.engine()
    handlers = build_handlers(settings, simulate=simulate or None, engine=engine)
    check_operations(engine.machines, handlers)
    check_power_libraries(engine)
    fired = engine.sweeper.sweep_timeouts(batch=settings.sweep_batch,
                                          threads=settings.sweep_threads)
    assigned = 0
    if "job" in engine.machines:
        from corral.jobs.service import JobService

        assigned = len(JobService(engine, default_ttl=settings.mo_override_ttl).dispatch_pass())
    if "lease" in engine.machines:
        from corral.app import job_leases
        from corral.leases.scheduler import LeaseScheduler

        LeaseScheduler(engine, settings).run_pass()
        watcher = job_leases(engine, settings)
        if watcher is not None:
            watcher.watch_pass()
    health = health_pass(engine, settings)
    if health is not None:
        health.run_pass()
    ran = build_worker(engine, settings, handlers).run_pending()
    engine.sweeper.refresh_state_counts()
    forgotten = 0
    if settings.idempotency_key_hours:
        forgotten = engine.sweeper.expire_idempotency_keys(
            timedelta(hours=settings.idempotency_key_hours))
    click.echo(f"timeouts fired: {fired}, jobs assigned: {assigned}, operations run: {ran}, "
               f"idempotency keys forgotten: {forgotten}")


@click.command()
@click.option("--once", is_flag=True, required=True,
              help="Prune now, then exit (worker processes prune every 5 minutes).")
@click.pass_obj
def prune(obj: CliContext, once: bool) -> None:
    """Delete history, finished operations and console attempts past the
    retention settings.

    history_retention_days (history and console attempts) and
    operation_retention_days (0: keep everything); every machine keeps its
    newest history row, every board its newest console attempt."""
    settings = obj.settings
    ages = retention(settings)
    if not any(ages.values()):
        click.echo("nothing to prune: history_retention_days and operation_retention_days "
                   "are 0 (keep everything)")
        return
    pruned = obj.engine().sweeper.prune(**ages)
    click.echo(f"history rows pruned: {pruned['history']}, operations pruned: "
               f"{pruned['operations']}, console attempts pruned: {pruned['consoles']}")

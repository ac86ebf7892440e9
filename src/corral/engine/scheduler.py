"""The periodic sweeps, driven by APScheduler 3 in every engine process.

Interval jobs (worker roles): the deadline sweep, the operation dispatcher,
the job scheduler and the expiry of old idempotency keys. Each job runs at
most once at a time in a process and swallows and logs its own errors, so a
database restart costs a few failed sweeps, not the process. Correctness
never depends on the schedule: the database decides what is due, and
``SKIP LOCKED`` decides who handles it.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = structlog.get_logger("corral.scheduler")


def _guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception as exc:
            log.error("sweep_failed", job=name, error=f"{type(exc).__name__}: {exc}")

    return run


def build_scheduler(jobs: dict[str, tuple[Callable[[], object], float]]) -> BackgroundScheduler:
    """A scheduler running each ``name: (callable, interval seconds)``."""
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max(2, len(jobs)))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )
    for name, (job, interval) in jobs.items():
        scheduler.add_job(_guarded(name, job), "interval", seconds=interval, id=name, name=name)
    return scheduler

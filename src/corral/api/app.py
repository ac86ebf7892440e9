"""The HTTP API assembled: board callbacks, the operator API, metrics and health.

Board callbacks, the hot path, are answered in :mod:`corral.api.callbacks`
without the framework; every other route lives in :mod:`corral.api.routes`,
one module per domain, and runs as a plain function in a thread pool.
Concurrent events reach the engine together and share transactions through
group commit. A response is sent only after the transaction holding its
event has committed. Errors are answered as :mod:`corral.api.errors` says;
the routes reach their services through :mod:`corral.api.deps`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, Counter

from corral import __version__
from corral.api import errors
from corral.api.callbacks import Callbacks, Front
from corral.api.deps import Services, known_query
from corral.api.routes import (
    boards,
    bootres,
    console,
    consoles,
    definitions,
    jobs,
    machines,
    metrics,
    pools,
    stream,
    tokens,
    webhooks,
)
from corral.api.routes import (
    leases as leases_routes,
)
from corral.config import parse_networks
from corral.engine.core import Engine
from corral.jobs.service import JobService
from corral.leases import LeaseService
from corral.machines.needs import check_needs
from corral.pools import PoolService
from corral.stream import HistoryTail
from corral.tokens import TokenStore

# What the kinds with their own module change in the shared machine routes.
KINDS = {"board": boards.KIND, "job": jobs.KIND, "lease": leases_routes.KIND}
# Served whatever kinds are loaded, after the machine routes.
ROUTERS = (boards.router, consoles.router, bootres.router, tokens.router, definitions.router,
           webhooks.router, console.router, stream.router, metrics.router)


def create_app(engine: Engine, tokens: TokenStore, registry: CollectorRegistry, *,
               threads: int = 64, default_ttl: int = 43200,
               pxe_root: str | None = None, boot_networks: str = "",
               events_heartbeat: float = 15.0, events_interval: float = 0.5,
               leases: LeaseService | None = None) -> Front:
    """The ASGI application: board callbacks answered by :class:`Front`, the rest
    by FastAPI (``Front.app``). ``threads`` bounds the operator requests handled
    at once; ``default_ttl`` is an override's TTL when a request gives none.

    Raises:
        DefinitionError: the definitions lack an event a route fires.
    """
    check_needs(engine.machines, [boards.NEEDS])
    kinds = engine.machines.kinds()
    callbacks = Callbacks(engine, tokens)
    # The OpenAPI document is served (/openapi.json); the interactive pages
    # (/docs, /redoc) are not: they load their scripts from a CDN.
    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan,
                  description="Persistent state machines for hardware test labs.",
                  dependencies=[Depends(known_query)], docs_url=None, redoc_url=None)
    app.state.services = Services(
        engine=engine, callbacks=callbacks, registry=registry,
        tail=HistoryTail(engine.store, interval=events_interval),
        pools=PoolService(engine, default_ttl=default_ttl) if "pool" in kinds else None,
        jobs=JobService(engine, default_ttl=default_ttl) if "job" in kinds else None,
        leases=(leases or default_leases(engine)) if "lease" in kinds else None,
        lease_refusals=Counter("corral_lease_refusals", "Holders' calls refused because "
                               "their lease had ended (fencing).", registry=registry),
        threads=threads, pxe_root=Path(pxe_root) if pxe_root else None,
        boot_networks=tuple(parse_networks(boot_networks)),
        events_heartbeat=events_heartbeat)
    routers = [boards.callback, *([leases_routes.router] if "lease" in kinds else []),
               *(machines.router(kind, KINDS.get(kind, machines.MachineKind()))
                 for kind in kinds),
               *([pools.router] if "pool" in kinds else []),
               *([jobs.router] if "job" in kinds else []), *ROUTERS]
    for router in routers:
        app.include_router(router)
    errors.install(app, routers)
    return Front(callbacks, app)


def default_leases(engine: Engine) -> LeaseService:
    """The lease service with the default ``lease_*`` settings."""
    from corral.config import Settings
    from corral.leases.scheduler import LeaseScheduler

    settings = Settings()
    return LeaseService(engine, settings, kick=LeaseScheduler(engine, settings).run_pass)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Size the thread pool, run group commit on this loop, follow the stream."""
    services: Services = app.state.services
    # Endpoints run in anyio's thread pool: its size is how many events can
    # wait on one group commit together.
    anyio.to_thread.current_default_thread_limiter().total_tokens = services.threads
    # Board callbacks share transactions on this loop (PostgreSQL).
    await services.engine.group.start_loop()
    await anyio.to_thread.run_sync(services.tail.start_in, asyncio.get_running_loop())
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(services.tail.stop)
        await services.engine.group.stop_loop()

"""Running the HTTP service in one process or several.

One Python process serves about one core's worth of requests. With
``http_processes`` > 1, ``corral serve`` starts that many API processes on the
same address (``SO_REUSEPORT``: the kernel spreads connections over them);
each has its own engine, group committer and token cache, and all share the
database. The sweeps and operation workers stay in the first process.
Counters and histograms then use Prometheus' multiprocess mode, so
``/metrics`` from any process reports the sum over all of them; the state
gauges are read from the database at scrape time anyway.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from corral.config import Settings, parse_listen
from corral.engine.core import Engine
from corral.errors import CorralError

if TYPE_CHECKING:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from corral.api.callbacks import Front

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _socket(settings: Settings, reuse_port: bool) -> socket.socket:
    host, port = parse_listen(settings.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CorralError(f"could not listen on {settings.listen}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


# The stored machine counts are used while at most this many recount
# intervals old (a worker missed a couple of recounts); then they are counted live.
COUNTS_MAX_AGE_INTERVALS = 3


def metrics_registry(engine: Engine, *, counts_max_age: float = 30.0
                     ) -> CollectorRegistry:
    """The registry for ``/metrics`` (multiprocess when several API processes run)."""
    from corral.api.metrics import build_registry

    return build_registry(engine, multiprocess=bool(os.environ.get(MULTIPROC_ENV)),
                          counts_max_age=counts_max_age)


def uvicorn_config(app: Front, *, header_timeout: float = 10.0,
                   body_timeout: float = 30.0) -> uvicorn.Config:
    """How ``corral serve`` runs uvicorn: the callback route answered in the
    HTTP protocol (:mod:`corral.api.protocol`), which also drops clients that
    take longer than ``header_timeout`` / ``body_timeout`` seconds to send a
    request; no access log (the engine logs every transition), no proxy-header
    rewriting (nothing here depends on the client's address, and the
    middleware would wrap every request)."""
    import uvicorn

    from corral.api.protocol import callback_protocol

    protocol = callback_protocol(app.callbacks, header_timeout=header_timeout,
                                 body_timeout=body_timeout)
    # Event streams never end by themselves: on shutdown they are given a few
    # seconds, then closed (clients resume from their Last-Event-ID).
    return uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                          proxy_headers=False, server_header=False, http=protocol or "auto",
                          timeout_graceful_shutdown=5)


def run_http(engine: Engine, settings: Settings, registry: CollectorRegistry) -> None:
    """Serve the API in this process until SIGTERM or SIGINT."""
    import uvicorn

    from corral.api.app import create_app
    from corral.app import lease_service
    from corral.tokens import TokenStore

    tokens = TokenStore(engine.store, cache_seconds=settings.token_cache_seconds)
    app = create_app(engine, tokens, registry, threads=settings.http_threads,
                     default_ttl=settings.mo_override_ttl, pxe_root=settings.pxe_root or None,
                     boot_networks=settings.boot_networks,
                     events_heartbeat=settings.events_heartbeat,
                     events_interval=settings.events_interval,
                     leases=lease_service(engine, settings))
    sock = _socket(settings, reuse_port=settings.http_processes > 1)
    server = uvicorn.Server(uvicorn_config(app, header_timeout=settings.http_header_timeout,
                                           body_timeout=settings.http_body_timeout))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal
    # to the handlers it found: make those harmless, so that the clean-up that
    # follows (sweeps, workers, pending group commits) still runs.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    # Everything built so far (modules, definitions, the app) lives as long as
    # the process: keep it out of the collector's full passes, which otherwise
    # stall every request in flight (p99 of the callback benchmark: 86 -> 46 ms).
    gc.freeze()
    tokens.start_revalidating()
    try:
        server.run(sockets=[sock])
    finally:
        tokens.close()
        sock.close()
    if not server.started:
        raise CorralError(f"could not serve on {settings.listen}")


def _api_process(settings: Settings) -> None:
    """An extra API process (started with the spawn method: a fresh interpreter)."""
    from corral.app import build_engine
    from corral.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    engine = build_engine(settings)
    if settings.group_commit_threads:
        engine.group.start(threads=settings.group_commit_threads,
                                  max_batch=settings.group_commit_max_batch)
    try:
        run_http(engine, settings, metrics_registry(
            engine, counts_max_age=COUNTS_MAX_AGE_INTERVALS * settings.state_count_interval))
    finally:
        engine.close()


@contextmanager
def api_processes(settings: Settings) -> Iterator[None]:
    """Start ``http_processes - 1`` extra API processes for the duration; stop
    them (SIGTERM, so they finish their requests) on the way out."""
    extra = settings.http_processes - 1
    if extra <= 0:
        yield
        return
    created = None
    if not os.environ.get(MULTIPROC_ENV):
        created = tempfile.mkdtemp(prefix="corral-metrics-")
        os.environ[MULTIPROC_ENV] = created
    spawn = multiprocessing.get_context("spawn")
    children = [spawn.Process(target=_api_process, args=(settings,), name=f"corral-api-{i}")
                for i in range(1, extra + 1)]
    for child in children:
        child.start()
    try:
        yield
    finally:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
        if created:
            shutil.rmtree(created, ignore_errors=True)

"""What monitoring reads: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz``.

The metrics themselves are :mod:`corral.api.metrics`'s; readiness asks the
engine (:meth:`corral.engine.core.Engine.ping`). None of these takes a token:
a scraper or a load balancer has none.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from corral.api.deps import ServicesDep
from corral.api.models import ErrorOut
from corral.errors import SchemaNotCurrent

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", summary="Prometheus metrics.", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", summary="The process is alive.")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorOut}},
            summary="The database is reachable and its schema current.")
def readyz(services: ServicesDep) -> Any:
    try:
        services.engine.ping()
    except SchemaNotCurrent as exc:
        return JSONResponse({"error": "schema_not_current", "message": str(exc)},
                            status_code=503)
    except Exception as exc:
        return JSONResponse({"error": "database_unavailable",
                             "message": f"{type(exc).__name__}: {exc}"[:500]},
                            status_code=503)
    return {"status": "ready"}

"""What the routes share: the services behind them, and who is asking.

:func:`corral.api.app.create_app` builds one :class:`Services` per app and
keeps it in ``app.state.services``; a route names what it needs as a
parameter (``engine: EngineDep``, ``who: Viewer``) and FastAPI hands it over
per request. The token is checked once, by :class:`~corral.api.callbacks.Callbacks`
(the same check the callback fast path makes), and a role dependency refuses
a token below the route's role with 403.

No ``from __future__ import annotations``: FastAPI reads these annotations at
run time.
"""

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from corral.api.callbacks import ApiError, Callbacks
from corral.engine.core import Engine
from corral.jobs.service import JobService
from corral.leases import LeaseService
from corral.pools import PoolService
from corral.stream import HistoryTail
from corral.tokens import Principal


@dataclass(frozen=True, kw_only=True)
class Services:
    """Everything the routes of one app call, built once at start-up."""

    engine: Engine
    callbacks: Callbacks
    registry: CollectorRegistry
    tail: HistoryTail
    # Present only where the definitions load the pool and job kinds.
    pools: PoolService | None
    jobs: JobService | None
    leases: LeaseService | None
    # Holders' calls refused because their lease had ended (fencing).
    lease_refusals: Any
    # The operator requests handled at once (anyio's thread pool).
    threads: int
    pxe_root: Path | None
    boot_networks: tuple[IPv4Network | IPv6Network, ...]
    events_heartbeat: float


async def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def engine(request: Request) -> Engine:
    return request.app.state.services.engine  # type: ignore[no-any-return]


async def pools(request: Request) -> PoolService:
    return request.app.state.services.pools  # type: ignore[no-any-return]


async def jobs(request: Request) -> JobService:
    return request.app.state.services.jobs  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]
EngineDep = Annotated[Engine, Depends(engine)]
PoolsDep = Annotated[PoolService, Depends(pools)]
JobsDep = Annotated[JobService, Depends(jobs)]

bearer = HTTPBearer(auto_error=False, description="A board or operator token.")


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """Who the request's token belongs to. Raises: ApiError 401."""
    callbacks: Callbacks = request.app.state.services.callbacks
    return await callbacks.principal(credentials.credentials if credentials else None)


def role(needed: str):  # type: ignore[no-untyped-def]
    """A dependency: the token's principal, if its role is at least ``needed``."""
    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.at_least(needed):
            raise ApiError(403, "forbidden",
                           f"this needs the {needed} role; token {who.name!r} is {who.role}")
        return who
    return check


AnyToken = Annotated[Principal, Depends(principal)]
Viewer = Annotated[Principal, Depends(role("viewer"))]
Operator = Annotated[Principal, Depends(role("operator"))]
Admin = Annotated[Principal, Depends(role("admin"))]


def known_query(request: Request) -> None:
    """Refuse, by name, a query parameter the route does not take (a typo'd
    ``?faild=true`` would otherwise list every board)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    allowed = {p.alias for p in route.dependant.query_params}
    for dependency in route.dependant.dependencies:
        allowed |= {p.alias for p in dependency.query_params}
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise RequestValidationError([{
            "loc": ("query", unknown[0]),
            "msg": f"unknown query parameter; this route takes "
                   f"{', '.join(sorted(allowed)) or 'none'}"}])

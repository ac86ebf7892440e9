"""Pool fleets, assignments and overrides, beyond the routes every kind has.

Served where the pool kind is loaded; each route calls :class:`PoolService`,
which keeps a pool's assignment row and its machine's state in one
transaction. Operator role; creating a fleet needs admin.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from corral.api.callbacks import NAME
from corral.api.deps import Admin, Operator, PoolsDep, Viewer
from corral.api.errors import ERRORS
from corral.api.models import (
    JOB,
    AcquireIn,
    AssignmentOut,
    FleetIn,
    HeldOut,
    OverrideIn,
    ReleaseIn,
    TransitionOut,
)

PoolName = Annotated[str, Path(pattern=NAME, description="The pool's name.")]

router = APIRouter(tags=["pools"])


@router.post("/api/v1/pool-fleets", response_model=list[str], responses=ERRORS,
             summary="Create testbed-cert-pool-{1..count}-{fabric} (admin); returns the "
                     "pools created.")
def create_fleet(body: FleetIn, pools: PoolsDep, who: Admin) -> list[str]:
    return [r.name for r in pools.create_fleet(body.fabric, body.count, actor=who.name)]


@router.get("/api/v1/pool-assignments", response_model=list[AssignmentOut],
            responses=ERRORS, summary="Which job holds which pool.")
def assignments(
    pools: PoolsDep,
    _: Viewer,
    job_run_id: Annotated[str | None, Query(pattern=JOB)] = None,
) -> list[AssignmentOut]:
    return [AssignmentOut(pool=a.pool, job_run_id=a.job_run_id, assigned_at=a.assigned_at)
            for a in pools.assignments(job_run_id)]


@router.post("/api/v1/pool-assignments", response_model=HeldOut, responses=ERRORS,
             summary="Take a pool (or any free ones) for a job.")
def acquire(body: AcquireIn, pools: PoolsDep, who: Operator) -> HeldOut:
    if body.pool is not None:
        return HeldOut.from_held(pools.acquire(body.job_run_id, body.pool, actor=who.name))
    return HeldOut.from_held(pools.acquire_any(body.job_run_id, count=body.count,
                                               fabric=body.fabric, actor=who.name))


@router.post("/api/v1/pool-assignments/release", response_model=list[str],
             responses=ERRORS, summary="Free every pool a job holds; returns them.")
def release(body: ReleaseIn, pools: PoolsDep, who: Operator) -> list[str]:
    return pools.release_all(body.job_run_id, actor=who.name, reason=body.reason)


@router.post("/api/v1/pools/{name}/override", response_model=TransitionOut,
             responses=ERRORS,
             summary="Start an OS override of a pool for a job (taking the pool if free).")
def override(name: PoolName, body: OverrideIn, pools: PoolsDep,
             who: Operator) -> TransitionOut:
    return TransitionOut.from_result(pools.override(
        name, job_run_id=body.job_run_id, os_version=body.os_version,
        ttl_seconds=body.ttl_seconds, actor=who.name))

"""Submitting, canceling and signalling jobs, and a job's fuller document.

Served where the job kind is loaded. Besides its own routes, the job kind
gives the shared machine routes (:mod:`corral.api.routes.machines`) its
:data:`KIND`: ``GET /api/v1/jobs/{name}`` answers a :class:`JobOut`, which
adds the spec's name, priority, progress and outcome. Operator role.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from corral.api.callbacks import NAME
from corral.api.deps import JobsDep, Operator, Services, Viewer
from corral.api.errors import ERRORS
from corral.api.models import (
    FABRIC,
    CancelIn,
    JobOut,
    MaizeIn,
    SignalIn,
    SpecOut,
    SubmitIn,
    SubmittedOut,
    TransitionOut,
)
from corral.api.routes.machines import MachineKind
from corral.jobs import versions


def describe_job(services: Services, kind: str, name: str, role: str) -> dict[str, Any]:
    assert services.jobs is not None, "the job routes are served with the job kind"
    return services.jobs.describe(name, role)


KIND = MachineKind(document=JobOut, describe=describe_job)

JobName = Annotated[str, Path(pattern=NAME, description="The job's id.")]

router = APIRouter(tags=["jobs"])


@router.post("/api/v1/jobs", response_model=SubmittedOut, responses=ERRORS,
             summary="Submit a job spec; answers its id once the schema check passed.")
def submit(body: SubmitIn, jobs: JobsDep, who: Operator) -> SubmittedOut:
    return SubmittedOut.from_result(jobs.submit(body.spec, actor=who.name))


@router.post("/api/v1/maize-snapshots", response_model=SubmittedOut, responses=ERRORS,
             summary="Submit a Maize snapshot as an OS override job.")
def submit_maize(
    body: MaizeIn, jobs: JobsDep, who: Operator,
    fabric: Annotated[str | None, Query(pattern=FABRIC)] = None,
) -> SubmittedOut:
    return SubmittedOut.from_result(jobs.submit_maize(body.model_dump_json(), actor=who.name,
                                                      fabric=fabric))


@router.get("/api/v1/jobs/{name}/spec", response_model=SpecOut, responses=ERRORS,
            summary="The spec as submitted, or converted to another version.")
def spec(name: JobName, jobs: JobsDep, _: Viewer,
         api_version: Annotated[str | None, Query(max_length=32)] = None) -> SpecOut:
    record = jobs.record(name)
    if api_version is None or api_version == record["api_version"]:
        return SpecOut(name=name, api_version=record["api_version"],
                       format=record["format"], text=record["spec_text"])
    doc = versions.convert(jobs.spec(name), api_version)
    return SpecOut(name=name, api_version=api_version, format="yaml",
                   text=versions.dumps(doc, "yaml"))


@router.post("/api/v1/jobs/{name}/cancel", response_model=TransitionOut, responses=ERRORS,
             summary="Cancel a job that has not ended; its pools are released.")
def cancel(name: JobName, body: CancelIn, jobs: JobsDep, who: Operator) -> TransitionOut:
    return TransitionOut.from_result(jobs.cancel(name, actor=who.name, reason=body.reason))


@router.post("/api/v1/jobs/{name}/signal", response_model=TransitionOut, responses=ERRORS,
             summary="Send the event a waitForEventAction waits for.")
def signal(name: JobName, body: SignalIn, jobs: JobsDep, who: Operator) -> TransitionOut:
    return TransitionOut.from_result(jobs.signal(name, body.event, actor=who.name))

"""The request and response documents of the HTTP API, in one place.

Each is a pydantic model, so that FastAPI validates bodies against it and
``/openapi.json`` describes it; routes in :mod:`corral.api.routes` name them
as parameters and response models. Patterns the callback fast path checks by
hand (``NAME``, ``EVENT``) come from :mod:`corral.api.callbacks`, so that both
paths accept the same names.

No ``from __future__ import annotations``: pydantic and FastAPI read these
annotations at run time.
"""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.api.callbacks import EVENT, NAME
from corral.engine.core import FireResult
from corral.names import MAX_WEBHOOK_URL, OS_VERSION, WEBHOOK_URL
from corral.pools.service import Held

# A job run's id, as the pools' holder (a CI pipeline's run id).
JOB = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
# A pool fleet's fabric (it ends the fleet's pool names).
FABRIC = r"^[a-z0-9][a-z0-9-]{0,62}$"


class FleetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fabric: str = Field(pattern=FABRIC)
    count: int = Field(ge=1, le=1000)


class AcquireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_run_id: str = Field(pattern=JOB)
    pool: str | None = Field(default=None, pattern=NAME,
                             description="This pool; without it, any free ones.")
    count: int = Field(default=1, ge=1, le=1000)
    fabric: str | None = Field(default=None, pattern=FABRIC)


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_run_id: str = Field(pattern=JOB)
    reason: str | None = Field(default=None, max_length=2000)


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_run_id: str = Field(pattern=JOB)
    os_version: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    ttl_seconds: int | None = Field(default=None, ge=1, le=30 * 86400)


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = Field(min_length=1, max_length=1 << 20,
                      description="The job spec as YAML or JSON text (apiVersion corral/v1).")


class MaizeSnapshot(BaseModel):
    release: str = Field(pattern=OS_VERSION.pattern, description=(
        "The OS snapshot version to roll out (osOverrideAction's osVersion)."))


class MaizeIn(BaseModel):
    snapshot: MaizeSnapshot


class SubmittedOut(BaseModel):
    name: str = Field(description="The job's id.")
    state: str

    @classmethod
    def from_result(cls, result: FireResult) -> "SubmittedOut":
        return cls(name=result.name, state=result.to_state)


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=2000)


class SignalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")


class SpecOut(BaseModel):
    name: str
    api_version: str
    format: str
    text: str = Field(description="The spec as submitted, or converted to api_version.")


class AssignmentOut(BaseModel):
    pool: str
    job_run_id: str
    assigned_at: datetime


class HeldOut(BaseModel):
    job_run_id: str
    pools: list[str]
    new: list[str] = Field(description="Pools taken by this call (the others the job "
                                       "already held).")

    @classmethod
    def from_held(cls, held: Held) -> "HeldOut":
        return cls(job_run_id=held.job_run_id, pools=list(held.pools), new=list(held.new))


class ErrorOut(BaseModel):
    error: str
    message: str
    allowed_events: list[str] | None = None
    details: list[dict[str, Any]] | None = Field(
        default=None, description="For 422: each problem with its location.")


class TransitionOut(BaseModel):
    kind: str
    name: str
    event: str
    from_state: str
    state: str
    epoch: int
    replayed: bool = Field(description="True when an Idempotency-Key repeated an earlier "
                                        "request and this is its first response.")

    @classmethod
    def from_result(cls, result: FireResult) -> "TransitionOut":
        return cls(kind=result.kind, name=result.name, event=result.event,
                   from_state=result.from_state, state=result.to_state, epoch=result.epoch,
                   replayed=result.replayed)


class MachineOut(BaseModel):
    name: str
    state: str
    failed: bool
    state_entered_at: datetime
    deadline: datetime | None
    counters: dict[str, int]
    epoch: int
    attrs: dict[str, Any]
    vars: dict[str, Any] = Field(description="Values events stored for later states (a "
                                             "pool's override version and TTL).")
    allowed_events: list[str] = Field(description="The events the state accepts that this "
                                                  "token may fire.")
    accepted_events: dict[str, list[str]] = Field(
        description="Every event the state accepts, with who may fire it (board, operator, "
                    "admin, operation, timeout).")


class JobOut(MachineOut):
    job_name: str
    priority: int
    fabric: str | None
    api_version: str
    submitted_at: datetime
    submitted_by: str | None
    pool: str | None = Field(description="The pool the scheduler gave the job.")
    current: dict[str, Any] | None = Field(
        description="The action under way: stage, action, type, attempt.")
    leases: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The leases of its leaseActions (corral/v2): id, state, boards, "
                    "expires_at, ended_by, and held (false: the one it waits for).")
    failure_comment: str | None = Field(description="Why the job ended incomplete or "
                                                    "canceled.")
    finished_at: datetime | None


class KindOut(BaseModel):
    kind: str = Field(description="The machine kind (its routes are /api/v1/{kind}s).")
    description: str


class HistoryEntryOut(BaseModel):
    id: int
    epoch: int
    at: datetime
    event: str
    from_state: str
    to_state: str
    source: str
    actor: str | None
    reason: str | None
    payload: Any
    operation_id: int | None


class HistoryPage(BaseModel):
    entries: list[HistoryEntryOut]
    next_before: int | None = Field(description="Pass as `before` for the next, older page.")


class ForceStateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")
    if_state: str | None = Field(default=None, min_length=1, max_length=64)


class FireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(pattern=EVENT)
    payload: dict[str, Any] | None = None
    reason: str | None = Field(default=None, max_length=2000)


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool
    reason: str | None = Field(default=None, max_length=2000)


class RetireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")



class WebhookFilters(BaseModel):
    """What a subscription delivers: each filter a list of alternatives; a
    filter left out matches everything (the stream's filters, corral.stream)."""

    model_config = ConfigDict(extra="forbid")
    kind: list[str] = Field(default_factory=list)
    name: list[str] = Field(default_factory=list)
    state: list[str] = Field(default_factory=list, description="The state entered.")
    event: list[str] = Field(default_factory=list)
    source: list[str] = Field(default_factory=list)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=MAX_WEBHOOK_URL, pattern=WEBHOOK_URL.pattern, description=(
        "Where deliveries are POSTed: http:// or https://, a host, and printable ASCII "
        "(percent-encoded) with no spaces."))
    secret: str = Field(min_length=16, description="The HMAC-SHA256 key deliveries are "
                                                   "signed with (never shown again).")
    name: str | None = Field(None, pattern=NAME, description="Default: hook-N.")
    filters: WebhookFilters = Field(default_factory=WebhookFilters)
    from_start: bool = Field(False, description="Deliver every event kept, not only "
                                                "new ones.")

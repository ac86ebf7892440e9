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
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator
from typing_extensions import TypeAliasType

from corral.api.callbacks import EVENT, NAME
from corral.engine.core import FireResult
from corral.errors import InvalidRequest
from corral.names import MAX_WEBHOOK_URL, OS_VERSION, WEBHOOK_URL
from corral.payload import MAX_INT, MIN_INT, NONBLANK_PATTERN, TEXT_PATTERN, check_json
from corral.pools.service import Held
from corral.validation import describe

# A string a client chooses freely, with only the payload check's rule for text.
Text = Annotated[str, Field(pattern=TEXT_PATTERN)]

# A value in an event payload, as the payload check (corral.payload.check_json)
# takes it: JSON whose numbers lie in the signed 64-bit range and whose strings
# and keys hold no NUL. Two limits are not stated here, as JSON Schema has no
# word for them: nesting (at most 32 deep) and size (a callback's body is at
# most 64 KiB: a 413).
def _not_an_integer(value: Any) -> Any:
    # An integer out of range must not pass as the float it rounds to.
    if isinstance(value, int):
        raise ValueError("the integer is outside the signed 64-bit range")
    return value


def _closed_object(schema: dict[str, Any]) -> None:
    # pydantic states a dict's key pattern as patternProperties, which leaves
    # other keys free; say that every key has the pattern, and every value
    # the values' schema.
    ((pattern, values),) = schema.pop("patternProperties").items()
    schema["propertyNames"] = {"pattern": pattern}
    schema["additionalProperties"] = values


# The largest float below 2**63: the same floats as "< 2**63", with a bound a
# client's generator cannot round across.
MAX_FLOAT = float(2**63 - 1024)
Number = Annotated[float, Field(ge=MIN_INT, le=MAX_FLOAT, allow_inf_nan=False),
                   BeforeValidator(_not_an_integer)]
# mypy cannot follow a recursive TypeAliasType built around Annotated; the
# alias is only read by pydantic (validation and the JSON Schema).
PayloadValue = TypeAliasType(  # type: ignore[misc]
    "PayloadValue", Union[  # noqa: UP007 (a recursive alias needs the Union form)
        bool, Annotated[int, Field(ge=MIN_INT, le=MAX_INT)], Number, Text,
        list["PayloadValue"],  # type: ignore[misc]
        Annotated[dict[Text, "PayloadValue"],  # type: ignore[misc]
                  Field(json_schema_extra=_closed_object)], None])
Payload = Annotated[dict[Text, PayloadValue],  # type: ignore[misc]
                    Field(json_schema_extra=_closed_object)]
"""An event's payload: a JSON object, as its JSON Schema states it."""


def _checked_payload(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"the payload must be a JSON object, not {describe(value)}")
    try:
        check_json(value, "payload")
    except InvalidRequest as exc:
        raise ValueError(str(exc)) from None
    return value


# A payload in a request body: checked by the payload check itself (whose
# messages name the place), documented as Payload; a test holds the two to
# the same answers.
CheckedPayload = Annotated[dict[str, Any], PlainValidator(
    _checked_payload, json_schema_input_type=Payload)]

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
    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT_PATTERN)


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_run_id: str = Field(pattern=JOB)
    os_version: str = Field(pattern=OS_VERSION.pattern)
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
    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT_PATTERN)


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
    reason: str = Field(min_length=1, max_length=2000, pattern=NONBLANK_PATTERN)
    if_state: str | None = Field(default=None, min_length=1, max_length=64)


class FireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(pattern=EVENT)
    payload: CheckedPayload | None = None
    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT_PATTERN)


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool
    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT_PATTERN)


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loop: int = Field(default=0, ge=0, le=1000, description=(
        "Burn-in: checks to run after this one, each as soon as the last passed "
        "(until one fails)."))
    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT_PATTERN)


class RetireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, pattern=NONBLANK_PATTERN)



class WebhookFilters(BaseModel):
    """What a subscription delivers: each filter a list of alternatives; a
    filter left out matches everything (the stream's filters, corral.stream)."""

    model_config = ConfigDict(extra="forbid")
    kind: list[Text] = Field(default_factory=list)
    name: list[Text] = Field(default_factory=list)
    state: list[Text] = Field(default_factory=list, description="The state entered.")
    event: list[Text] = Field(default_factory=list)
    source: list[Text] = Field(default_factory=list)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=MAX_WEBHOOK_URL, pattern=WEBHOOK_URL.pattern, description=(
        "Where deliveries are POSTed: http:// or https://, a host, and printable ASCII "
        "(percent-encoded) with no spaces."))
    secret: str = Field(min_length=16, pattern=TEXT_PATTERN, description=(
        "The HMAC-SHA256 key deliveries are signed with (never shown again)."))
    name: str | None = Field(None, pattern=NAME, description="Default: hook-N.")
    filters: WebhookFilters = Field(default_factory=WebhookFilters)
    from_start: bool = Field(False, strict=True, description="Deliver every event kept, not only "
                                                "new ones.")


class ConsoleAttemptOut(BaseModel):
    """One boot attempt's serial console (docs/console-capture.md)."""

    attempt: int = Field(description="Numbered 1, 2, ... per board.")
    history_id: int | None = Field(description="The history row of the boot that began "
                                   "it (null: output seen before any boot capture knew of).")
    started_at: datetime
    updated_at: datetime = Field(description="When text last arrived.")
    chars: int = Field(description="Characters written in all; offsets count from the "
                       "attempt's start.")
    dropped: int = Field(description="How many of the first characters were dropped to "
                         "keep the board under its bound.")
    bytes: int = Field(description="UTF-8 size of the text kept.")


class ConsoleTextOut(BaseModel):
    """A page of an attempt's console text (redacted)."""

    board: str
    attempt: int
    offset: int = Field(description="Where this text begins (later than asked when the "
                        "characters there were dropped).")
    next_offset: int = Field(description="Ask for this offset to read on.")
    chars: int = Field(description="The attempt's length so far.")
    text: str


class ConsoleCaptureOut(BaseModel):
    owner: str | None = Field(description="The engine process capturing this console "
                              "(null: none yet).")
    until: datetime | None = Field(description="When its claim ends unless renewed.")


class ConsoleOut(BaseModel):
    """A board's captured console: its attempts, and the newest one's first page."""

    board: str
    capture: ConsoleCaptureOut | None = Field(description="Who captures it (null: the "
                                              "board has no console: key).")
    attempts: list[ConsoleAttemptOut]
    latest: ConsoleTextOut | None

"""Job spec ``apiVersion: corral/v2``: the v1 fields, plus ``leaseAction`` (a
stage leases boards and the job holds them until it ends), as pydantic models;
conversion to and from the internal form.

The document's shape (keys, types, ranges, one action type per action) is
the models' and their errors read as every Corral file's do
(:mod:`corral.validation`), each with its path, e.g.
``stages[0].actions[0].leaseAction.count: must be a whole number of at most
100, not the number 500``. The checks across fields (unique names, timeouts
within the job's, a hold within its action's timeout) run once the shape is
right, in v1's words. Every problem found is reported at once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from corral.errors import InvalidRequest
from corral.jobs import v1
from corral.jobs.actions import TYPES
from corral.jobs.actions.os_override import VERSION_RE
from corral.jobs.checks import NAME_LIMIT
from corral.jobs.spec import (
    PRIORITY_LABELS,
    UNITS,
    ActionSpec,
    DowngradeError,
    JobSpec,
    SpecError,
    StageSpec,
    duration_text,
)
from corral.leases import selector as selectors
from corral.names import FABRIC_NAME, SIGNAL_NAME
from corral.validation import Strict, describe, problems_of, refuse

API_VERSION = "corral/v2"
NUMBER = 2
MAX_RETRY = v1.MAX_RETRY
# A heartbeat the job's watcher (every job_dispatch_interval, 1 s by default)
# can keep up with, and no longer than the lease service allows.
HEARTBEAT_MIN, HEARTBEAT_MAX = 5, 86400
RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")



def _name(value: str) -> str:
    if not 1 <= len(value) <= NAME_LIMIT:
        raise refuse("must be 1-{limit} characters long, not {length}", limit=NAME_LIMIT,
                     length=len(value))
    return value


Name = Annotated[str, AfterValidator(_name)]
Whole = Annotated[int, Field(ge=1)]


class Duration(Strict):
    """``{minutes: 5}``: exactly one unit, a whole number >= 1."""

    days: Whole | None = None
    hours: Whole | None = None
    minutes: Whole | None = None
    seconds: Whole | None = None

    @model_validator(mode="after")
    def _one_unit(self) -> Duration:
        given = [u for u, _ in UNITS if getattr(self, u) is not None]
        if len(given) != 1:
            raise refuse("must have exactly one of days, hours, minutes, seconds, not "
                         "{given}", given=len(given))
        return self

    @property
    def total(self) -> int:
        return sum((getattr(self, u) or 0) * size for u, size in UNITS)


class Timeouts(Strict):
    job: Duration
    action: Duration


class OsOverrideBody(Strict):
    osVersion: str

    @field_validator("osVersion")
    @classmethod
    def _version(cls, value: str) -> str:
        if not 1 <= len(value) <= 200 or not VERSION_RE.match(value):
            raise refuse("must be 1-200 letters, digits, '.', '_', '+' or '-' (no spaces), "
                         "not {value}", value=repr(value))
        return value


class HoldBody(Strict):
    duration: Duration


class WaitForEventBody(Strict):
    event: str

    @field_validator("event")
    @classmethod
    def _event(cls, value: str) -> str:
        if not SIGNAL_NAME.matches(value):
            raise refuse("must be lowercase letters, digits, '_', '.', '-', starting with a "
                         "letter (at most 63), not {value}", value=repr(value))
        return value


class LeaseBody(Strict):
    selector: str
    count: Annotated[int, Field(ge=1, le=100)] = 1
    duration: Duration
    release: str | None = None
    heartbeat: Duration | None = None
    priority: Annotated[int, Field(ge=-100, le=100)] = 0
    on_return: Literal["reimage", "power_cycle"] = "reimage"

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not value.strip():
            raise refuse("must not be empty (a selector such as arch=arm64)")
        try:
            return str(selectors.parse(value))
        except InvalidRequest as exc:
            raise refuse("{problem}", problem=str(exc)) from None

    @field_validator("release")
    @classmethod
    def _release(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 200 or not RELEASE_RE.match(value)):
            raise refuse("must be 1-200 letters, digits, '.', '_', ':', '/' or '-', not "
                         "{value}", value=repr(value))
        return value

    @field_validator("heartbeat")
    @classmethod
    def _heartbeat(cls, value: Duration | None) -> Duration | None:
        if value is not None and not HEARTBEAT_MIN <= value.total <= HEARTBEAT_MAX:
            raise refuse("must be from 5 seconds to 1 day, not {given}",
                         given=duration_text(value.total))
        return value


BODIES: dict[str, type[Strict]] = {
    "osOverrideAction": OsOverrideBody, "holdAction": HoldBody,
    "waitForEventAction": WaitForEventBody, "leaseAction": LeaseBody,
}


class ActionDoc(Strict):
    name: Name
    timeout: Duration | None = None
    failure_retry: Annotated[int, Field(ge=0, le=MAX_RETRY)] = 0
    osOverrideAction: OsOverrideBody | None = None
    holdAction: HoldBody | None = None
    waitForEventAction: WaitForEventBody | None = None
    leaseAction: LeaseBody | None = None

    @model_validator(mode="after")
    def _one_type(self) -> ActionDoc:
        given = [key for key in BODIES if getattr(self, key) is not None]
        if len(given) != 1:
            raise refuse("must have exactly one action type of {types}{has}",
                         types=", ".join(BODIES),
                         has=f"; it has {', '.join(given)}" if given else "")
        return self

    @property
    def type(self) -> str:
        return next(key for key in BODIES if getattr(self, key) is not None)


class StageDoc(Strict):
    name: Name
    actions: Annotated[list[ActionDoc], Field(min_length=1)]


class JobDoc(Strict):
    apiVersion: str
    kind: str
    job_name: Name
    priority: int = PRIORITY_LABELS["medium"]
    timeouts: Timeouts
    fabric: str | None = None
    context: dict[str, Any] | None = None
    stages: Annotated[list[StageDoc], Field(min_length=1)]

    @field_validator("apiVersion")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != API_VERSION:
            raise refuse("must be {wanted} here, not {value}", wanted=repr(API_VERSION),
                         value=repr(value))
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != "Job":
            raise refuse("must be 'Job', not {value}", value=repr(value))
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value in PRIORITY_LABELS:
                return PRIORITY_LABELS[value]
            raise refuse("must be high, medium, low or an integer 0-100, not {value}",
                         value=repr(value))
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise refuse("must be high, medium, low or an integer 0-100, not {value}",
                         value=describe(value))
        return value

    @field_validator("fabric")
    @classmethod
    def _fabric(cls, value: str | None) -> str | None:
        if value is not None and not FABRIC_NAME.matches(value):
            raise refuse("must be lowercase letters, digits and '-', not {value}",
                         value=repr(value))
        return value


_ADAPTER = TypeAdapter(JobDoc)


def parse(doc: Any) -> JobSpec:
    """Validate a v2 document and return its internal form.

    Raises:
        SpecError: listing every problem, each with its path.
    """
    try:
        model = _ADAPTER.validate_python(doc)
    except ValidationError as exc:
        raise SpecError([p.message for p in problems_of(exc, JobDoc, doc, "",
                                                        top_level="(top level)")]) from None
    problems = _cross_checks(model)
    if problems:
        raise SpecError(problems)
    return JobSpec(
        job_name=model.job_name, priority=model.priority,
        job_timeout_seconds=model.timeouts.job.total,
        action_timeout_seconds=model.timeouts.action.total, fabric=model.fabric,
        context=v1._plain(model.context) if model.context is not None else None,
        stages=tuple(StageSpec(name=stage.name, actions=tuple(
            ActionSpec(name=action.name, type=action.type,
                       params=_params(action.type, getattr(action, action.type)),
                       timeout_seconds=action.timeout.total if action.timeout else None,
                       failure_retry=action.failure_retry)
            for action in stage.actions)) for stage in model.stages))


def _params(kind: str, body: Any) -> dict[str, Any]:
    """An action body in internal form (the same as v1's for v1's types)."""
    if isinstance(body, OsOverrideBody):
        return {"os_version": body.osVersion}
    if isinstance(body, HoldBody):
        return {"duration_seconds": body.duration.total}
    if isinstance(body, WaitForEventBody):
        return {"event": body.event}
    assert isinstance(body, LeaseBody), kind
    return {"selector": body.selector, "count": body.count,
            "duration_seconds": body.duration.total, "release": body.release,
            "heartbeat_seconds": body.heartbeat.total if body.heartbeat else None,
            "priority": body.priority, "on_return": body.on_return}


def _cross_checks(model: JobDoc) -> list[str]:
    """What no single field can say, in v1's words."""
    problems = []
    job, default = model.timeouts.job.total, model.timeouts.action.total
    if default > job:
        problems.append(f"timeouts.action: {duration_text(default)} is longer than the job "
                        f"timeout ({duration_text(job)})")
    stages: set[str] = set()
    for s, stage in enumerate(model.stages):
        if stage.name in stages:
            problems.append(f"stages[{s}].name: {stage.name!r} is used by an earlier stage")
        stages.add(stage.name)
        actions: set[str] = set()
        for a, action in enumerate(stage.actions):
            path = f"stages[{s}].actions[{a}]"
            if action.name in actions:
                problems.append(f"{path}.name: {action.name!r} is used by an earlier action "
                                "of this stage")
            actions.add(action.name)
            timeout = action.timeout.total if action.timeout else None
            if timeout and timeout > job:
                problems.append(f"{path}.timeout: {duration_text(timeout)} is longer than the "
                                f"job timeout ({duration_text(job)})")
            effective = timeout or default
            if action.holdAction is not None and action.holdAction.duration.total > effective:
                problems.append(f"{path}.holdAction.duration: "
                                f"{duration_text(action.holdAction.duration.total)} is longer "
                                f"than the action's timeout ({duration_text(effective)})")
    return problems


def dump(spec: JobSpec) -> dict[str, Any]:
    """The internal form as a v2 document (v2 expresses every action type so
    far; a later one raises DowngradeError, as v1's dump does)."""
    for s, a, action in spec.actions():
        kind = TYPES.get(action.type)
        if kind is None or kind.since > NUMBER:
            needs = f"corral/v{kind.since}" if kind else "a newer Corral"
            raise DowngradeError(f"cannot convert to {API_VERSION} without losing "
                                 f"information: stages[{s}].actions[{a}]: action type "
                                 f"{action.type} needs {needs}; {API_VERSION} cannot "
                                 "express it")
    return v1.document(spec, API_VERSION)


def _reference() -> tuple[tuple[str, str, bool, str], ...]:
    """v1's reference rows with v2's version, then the fields v2 adds."""
    rows = [(path, kind, required, "`corral/v2`." if path == "apiVersion" else text)
            for path, kind, required, text in v1.FIELDS]
    new = [t for t in TYPES.values() if v1.NUMBER < t.since <= NUMBER]
    rows += [(f"stages[].actions[].{t.key}", "mapping", False, t.summary) for t in new]
    rows += [(f"stages[].actions[].{t.key}.{f.name}", f.type, f.required, f.description)
             for t in new for f in t.fields]
    return tuple(rows)


# The spec reference (path, type, required, description), shown in docs/jobs.md.
FIELDS = _reference()

"""Job spec ``apiVersion: corral/v1``: strict validation, and conversion to and
from the internal form.

One strict schema is used at submit time and again wherever a stored spec is
read, so the two can never disagree (LAVA's submit and dispatch schemas do).
Every problem is reported at once, each with its path, e.g.
``stages[0].actions[1].osOverrideAction.osVersion: must be a string, not the
number 1.1 (quote it to keep it a string)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.jobs.actions import TYPES
from corral.jobs.checks import Checker, describe, duration_doc
from corral.jobs.spec import (
    PRIORITY_LABELS,
    ActionSpec,
    DowngradeError,
    JobSpec,
    SpecError,
    StageSpec,
    duration_text,
)
from corral.names import FABRIC_NAME

API_VERSION = "corral/v1"
NUMBER = 1
TOP_KEYS = ("apiVersion", "kind", "job_name", "priority", "timeouts", "fabric", "context",
            "stages")
REQUIRED = ("apiVersion", "kind", "job_name", "timeouts", "stages")
STAGE_KEYS = ("name", "actions")
ACTION_COMMON = ("name", "timeout", "failure_retry")
FABRIC_RE = FABRIC_NAME.regex
MAX_RETRY = 10

# The spec reference: (path, type, required, description). docs/jobs.md shows
# this table and a test keeps the two equal; another checks that the golden
# corpus uses every path.
FIELDS: tuple[tuple[str, str, bool, str], ...] = (
    ("apiVersion", "string", True, "`corral/v1`."),
    ("kind", "string", True, "`Job`."),
    ("job_name", "string", True, "1-200 characters."),
    ("priority", "string or integer", False,
     "`high` (100), `medium` (50, the default), `low` (0), or an integer 0-100."),
    ("timeouts", "mapping", True, "`job` and `action`, both required."),
    ("timeouts.job", "duration", True, "The whole job's limit, from dispatch."),
    ("timeouts.action", "duration", True,
     "Each action's default limit; at most the job's."),
    ("fabric", "string", False, "Only pools of this fabric (lowercase, digits, `-`)."),
    ("context", "mapping", False, "Free-form; kept as given."),
    ("stages", "list", True, "At least one stage, run in order."),
    ("stages[].name", "string", True, "1-200 characters, unique in the job."),
    ("stages[].actions", "list", True, "At least one action, run in order."),
    ("stages[].actions[].name", "string", True, "1-200 characters, unique in the stage."),
    ("stages[].actions[].timeout", "duration", False,
     "This action's limit instead of `timeouts.action`; at most the job's."),
    ("stages[].actions[].failure_retry", "integer", False,
     f"How many times a failed or timed-out action is tried again (0-{MAX_RETRY}, "
     "default 0)."),
    *((f"stages[].actions[].{t.key}", "mapping", False, t.summary) for t in TYPES.values()
      if t.since <= NUMBER),
    *((f"stages[].actions[].{t.key}.{f.name}", f.type, f.required, f.description)
      for t in TYPES.values() if t.since <= NUMBER for f in t.fields),
)


def action_types() -> list[str]:
    return [t.key for t in TYPES.values() if t.since <= NUMBER]


def parse(doc: Any) -> JobSpec:
    """Validate a v1 document and return its internal form.

    Raises:
        SpecError: listing every problem, each with its path.
    """
    check = Checker()
    top = check.mapping(doc, "", TOP_KEYS, REQUIRED)
    if top is None:
        raise SpecError(check.problems)
    if "apiVersion" in top and top["apiVersion"] != API_VERSION:
        check.error("apiVersion", f"must be {API_VERSION!r} here, not {top['apiVersion']!r}")
    if "kind" in top and top["kind"] != "Job":
        check.error("kind", f"must be 'Job', not {top['kind']!r}")
    job_name = check.string(top["job_name"], "job_name") if "job_name" in top else None
    priority = _priority(top.get("priority", "medium"), check)
    fabric = None
    if "fabric" in top:
        fabric = check.string(top["fabric"], "fabric", limit=63, pattern=FABRIC_RE,
                              what="lowercase letters, digits and '-'")
    context = top.get("context")
    if "context" in top and not isinstance(context, Mapping):
        check.error("context", f"must be a mapping, not {describe(context)}")
    job_timeout = action_timeout = None
    if "timeouts" in top:
        timeouts = check.mapping(top["timeouts"], "timeouts", ("job", "action"),
                                 ("job", "action"))
        if timeouts is not None:
            if "job" in timeouts:
                job_timeout = check.duration(timeouts["job"], "timeouts.job")
            if "action" in timeouts:
                action_timeout = check.duration(timeouts["action"], "timeouts.action")
        if job_timeout and action_timeout and action_timeout > job_timeout:
            check.error("timeouts.action", f"{duration_text(action_timeout)} is longer than "
                        f"the job timeout ({duration_text(job_timeout)})")
    stages = _stages(top.get("stages"), check, job_timeout, action_timeout) \
        if "stages" in top else ()
    if check.problems:
        raise SpecError(check.problems)
    assert job_name is not None
    assert priority is not None
    assert job_timeout is not None
    assert action_timeout is not None
    return JobSpec(job_name=job_name, priority=priority, job_timeout_seconds=job_timeout,
                   action_timeout_seconds=action_timeout, stages=stages, fabric=fabric,
                   context=_plain(context) if context is not None else None)


def _priority(value: Any, check: Checker) -> int | None:
    if isinstance(value, str):
        if value in PRIORITY_LABELS:
            return PRIORITY_LABELS[value]
        check.error("priority", f"must be high, medium, low or an integer 0-100, not "
                    f"{value!r}")
        return None
    return check.integer(value, "priority", 0, 100)


def _stages(raw: Any, check: Checker, job_timeout: int | None,
            default_timeout: int | None) -> tuple[StageSpec, ...]:
    if not isinstance(raw, list) or not raw:
        check.error("stages", "must be a non-empty list of stages")
        return ()
    stages = []
    seen: set[str] = set()
    for s, body in enumerate(raw):
        path = f"stages[{s}]"
        stage = check.mapping(body, path, STAGE_KEYS, STAGE_KEYS)
        if stage is None:
            continue
        name = check.string(stage["name"], f"{path}.name") if "name" in stage else None
        if name is not None and name in seen:
            check.error(f"{path}.name", f"{name!r} is used by an earlier stage")
        seen.add(name or "")
        actions = _actions(stage.get("actions"), path, check, job_timeout, default_timeout) \
            if "actions" in stage else ()
        if name is not None:
            stages.append(StageSpec(name=name, actions=actions))
    return tuple(stages)


def _actions(raw: Any, stage_path: str, check: Checker, job_timeout: int | None,
             default_timeout: int | None) -> tuple[ActionSpec, ...]:
    path = f"{stage_path}.actions"
    if not isinstance(raw, list) or not raw:
        check.error(path, "must be a non-empty list of actions")
        return ()
    allowed = (*ACTION_COMMON, *action_types())
    actions = []
    seen: set[str] = set()
    for a, body in enumerate(raw):
        apath = f"{path}[{a}]"
        action = check.mapping(body, apath, allowed, ("name",))
        if action is None:
            continue
        name = check.string(action["name"], f"{apath}.name") if "name" in action else None
        if name is not None and name in seen:
            check.error(f"{apath}.name", f"{name!r} is used by an earlier action of this "
                        "stage")
        seen.add(name or "")
        given = [key for key in action_types() if key in action]
        if len(given) != 1:
            check.error(apath, f"must have exactly one action type of {', '.join(action_types())}"
                        + (f"; it has {', '.join(given)}" if given else ""))
        timeout = None
        if "timeout" in action:
            timeout = check.duration(action["timeout"], f"{apath}.timeout")
            if timeout and job_timeout and timeout > job_timeout:
                check.error(f"{apath}.timeout", f"{duration_text(timeout)} is longer than the "
                            f"job timeout ({duration_text(job_timeout)})")
        retry = 0
        if "failure_retry" in action:
            retry = check.integer(action["failure_retry"], f"{apath}.failure_retry", 0,
                                  MAX_RETRY) or 0
        if len(given) != 1 or name is None:
            continue
        kind = TYPES[given[0]]
        params = kind.parse(action[given[0]], f"{apath}.{given[0]}", check)
        if params is None:
            continue
        effective = timeout or default_timeout
        if effective:
            kind.check_spec(params, effective, f"{apath}.{given[0]}", check)
        actions.append(ActionSpec(name=name, type=kind.key, params=params,
                                  timeout_seconds=timeout, failure_retry=retry))
    return tuple(actions)


def _plain(value: Any) -> Any:
    """Line-tracking YAML containers as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def dump(spec: JobSpec) -> dict[str, Any]:
    """The internal form as a v1 document.

    Raises:
        DowngradeError: the spec uses something v1 cannot express.
    """
    problems = []
    for s, a, action in spec.actions():
        kind = TYPES.get(action.type)
        if kind is None or kind.since > NUMBER:
            needs = f"corral/v{kind.since}" if kind else "a newer Corral"
            problems.append(f"stages[{s}].actions[{a}]: action type {action.type} needs "
                            f"{needs}; {API_VERSION} cannot express it")
    if problems:
        raise DowngradeError("cannot convert to " + API_VERSION + " without losing "
                             "information: " + "; ".join(problems))
    return document(spec, API_VERSION)


def document(spec: JobSpec, api_version: str) -> dict[str, Any]:
    """The internal form as a document of ``api_version`` (v1 and v2 write
    the same keys; each checks first that it can express the spec)."""
    labels = {v: k for k, v in PRIORITY_LABELS.items()}
    doc: dict[str, Any] = {
        "apiVersion": api_version, "kind": "Job", "job_name": spec.job_name,
        "priority": labels.get(spec.priority, spec.priority),
        "timeouts": {"job": duration_doc(spec.job_timeout_seconds),
                     "action": duration_doc(spec.action_timeout_seconds)},
    }
    if spec.fabric is not None:
        doc["fabric"] = spec.fabric
    if spec.context is not None:
        doc["context"] = _plain(spec.context)
    doc["stages"] = []
    for stage in spec.stages:
        actions = []
        for action in stage.actions:
            body: dict[str, Any] = {"name": action.name,
                                    action.type: TYPES[action.type].dump(action.params)}
            if action.timeout_seconds is not None:
                body["timeout"] = duration_doc(action.timeout_seconds)
            if action.failure_retry:
                body["failure_retry"] = action.failure_retry
            actions.append(body)
        doc["stages"].append({"name": stage.name, "actions": actions})
    return doc

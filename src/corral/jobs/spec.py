"""The internal form of a job spec: the hub every spec version converts to and from.

Specs are stored exactly as submitted, with their ``apiVersion``; the engine
only ever reads this form. Each version module (``corral.jobs.v1``) converts
its documents to it and back (one hub, a conversion per version, and
a conversion down that cannot express something fails instead of dropping it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidRequest

PRIORITY_LABELS = {"high": 100, "medium": 50, "low": 0}
UNITS = (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))


@dataclass(frozen=True, kw_only=True)
class ActionSpec:
    name: str
    type: str
    """The action type's key, e.g. ``osOverrideAction``."""
    params: Mapping[str, Any]
    """The type's parameters in internal form (seconds, not duration mappings)."""
    timeout_seconds: int | None = None
    failure_retry: int = 0


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    name: str
    actions: tuple[ActionSpec, ...]


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    job_name: str
    priority: int
    job_timeout_seconds: int
    action_timeout_seconds: int
    stages: tuple[StageSpec, ...]
    fabric: str | None = None
    context: Mapping[str, Any] | None = field(default=None, compare=True)

    def actions(self) -> list[tuple[int, int, ActionSpec]]:
        """Every action in run order, with its stage and action index."""
        return [(s, a, action) for s, stage in enumerate(self.stages)
                for a, action in enumerate(stage.actions)]

    def action_timeout(self, action: ActionSpec) -> int:
        return action.timeout_seconds or self.action_timeout_seconds

    def to_json(self) -> dict[str, Any]:
        """The internal form as stored beside the submitted text."""
        return {
            "job_name": self.job_name, "priority": self.priority,
            "job_timeout_seconds": self.job_timeout_seconds,
            "action_timeout_seconds": self.action_timeout_seconds,
            "fabric": self.fabric, "context": self.context,
            "stages": [{"name": s.name, "actions": [
                {"name": a.name, "type": a.type, "params": dict(a.params),
                 "timeout_seconds": a.timeout_seconds, "failure_retry": a.failure_retry}
                for a in s.actions]} for s in self.stages],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobSpec:
        return cls(
            job_name=doc["job_name"], priority=doc["priority"],
            job_timeout_seconds=doc["job_timeout_seconds"],
            action_timeout_seconds=doc["action_timeout_seconds"],
            fabric=doc.get("fabric"), context=doc.get("context"),
            stages=tuple(StageSpec(name=s["name"], actions=tuple(
                ActionSpec(name=a["name"], type=a["type"], params=dict(a["params"]),
                           timeout_seconds=a.get("timeout_seconds"),
                           failure_retry=a.get("failure_retry", 0))
                for a in s["actions"])) for s in doc["stages"]),
        )


class SpecError(InvalidRequest):
    """A spec with problems; every problem is listed, each with its path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid job spec: " + "; ".join(problems))


class DowngradeError(InvalidRequest):
    """The spec cannot be written in an older version without losing something."""


def duration_text(seconds: int) -> str:
    """``3600`` as ``1h``, ``90`` as ``90s``: for messages."""
    for unit, size in UNITS:
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit[0]}"
    return f"{seconds}s"

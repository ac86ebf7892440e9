"""The action types a job spec may use, one module each."""

from corral.jobs.actions import hold, lease, os_override, wait_for_event
from corral.jobs.actions.base import ActionType, Field, RunContext

TYPES: dict[str, ActionType] = {m.ACTION.key: m.ACTION
                                for m in (os_override, hold, wait_for_event, lease)}

__all__ = ["TYPES", "ActionType", "Field", "RunContext"]

"""``holdAction: {duration}``: keep the job's pools for a while, so that tests
outside Corral can use them; done when the duration has passed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.jobs.actions.base import ActionType, Field
from corral.jobs.checks import Checker, duration_doc
from corral.jobs.spec import duration_text


class HoldAction(ActionType):
    key = "holdAction"
    summary = "Keep the job's pools for a duration (tests outside Corral use them)."
    fields = (Field(name="duration", type="duration", required=True,
                    description="How long to hold; at most the action's timeout."),)
    timeout_is_success = True

    def parse(self, body: Any, path: str, check: Checker) -> dict[str, Any] | None:
        body = check.mapping(body, path, ("duration",), ("duration",))
        if body is None or "duration" not in body:
            return None
        seconds = check.duration(body["duration"], f"{path}.duration")
        return None if seconds is None else {"duration_seconds": seconds}

    def dump(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"duration": duration_doc(params["duration_seconds"])}

    def check_spec(self, params: Mapping[str, Any], timeout_seconds: int, path: str,
                   check: Checker) -> None:
        if params["duration_seconds"] > timeout_seconds:
            check.error(f"{path}.duration", f"{duration_text(params['duration_seconds'])} "
                        f"is longer than the action's timeout ({duration_text(timeout_seconds)})")

    def wait_seconds(self, params: Mapping[str, Any]) -> int | None:
        return int(params["duration_seconds"])


ACTION = HoldAction()

"""``waitForEventAction: {event}``: wait until the named event is sent to the
job (``corral job signal JOB EVENT`` or ``POST /api/v1/jobs/{id}/signal``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.jobs.actions.base import ActionType, Field
from corral.jobs.checks import Checker
from corral.names import SIGNAL_NAME

EVENT_RE = SIGNAL_NAME.regex


class WaitForEventAction(ActionType):
    key = "waitForEventAction"
    summary = "Wait until a named event is sent to the job over HTTP or the CLI."
    fields = (Field(name="event", type="string", required=True,
                    description="The event's name: lowercase letters, digits, `_`, `.`, "
                                "`-`, starting with a letter (at most 63)."),)

    def parse(self, body: Any, path: str, check: Checker) -> dict[str, Any] | None:
        body = check.mapping(body, path, ("event",), ("event",))
        if body is None or "event" not in body:
            return None
        event = check.string(body["event"], f"{path}.event", limit=63, pattern=EVENT_RE,
                             what="lowercase letters, digits, '_', '.', '-', starting with a "
                                  "letter")
        return None if event is None else {"event": event}

    def dump(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"event": params["event"]}

    def awaited_event(self, params: Mapping[str, Any]) -> str | None:
        return str(params["event"])


ACTION = WaitForEventAction()

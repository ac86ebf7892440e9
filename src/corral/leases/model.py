"""What a lease request holds, and who is asking (docs/leases.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from corral.names import BOARD_NAME, Role
from corral.payload import TEXT_PATTERN
from corral.validation import Strict

KIND = "lease"
BOARD = "board"
# Waiting for boards: in the queue, or keeping free ones for itself.
WAITING = ("queued", "allocating")
QUEUED = ("requested", *WAITING)
HOLDING = ("preparing", "active")
OPEN = (*QUEUED, *HOLDING, "returning")
ENDED = ("closed", "cancelled", "expired", "revoked", "failed")

Seconds = Annotated[int, Field(ge=1, le=366 * 86400)]
ON_RETURN = ("reimage", "power_cycle")


def _given(key: str) -> dict[str, Any]:
    """JSON Schema: ``key`` is present and not null."""
    return {"required": [key], "properties": {key: {"type": "string"}}}


class LeaseRequest(Strict):
    """A request for boards: one by name, or ``count`` matching a selector."""

    # What _one_way checks, stated in the JSON Schema (and so in /openapi.json):
    # no board, or a board with count 1 and no selector.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"not": _given("board")},
        {"properties": {"count": {"const": 1}}, "not": _given("selector")}]})

    board: Annotated[str, Field(pattern=BOARD_NAME.pattern)] | None = None
    selector: Annotated[str, Field(max_length=1000, pattern=TEXT_PATTERN)] | None = None
    count: Annotated[int, Field(ge=1, le=100)] = 1
    duration: Seconds | None = None
    release: Annotated[str, Field(min_length=1, max_length=200,
                                  pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")] | None = None
    priority: Annotated[int, Field(ge=-100, le=100)] = 0
    wait_timeout: Seconds | None = None
    heartbeat: Annotated[int, Field(ge=5, le=86400)] | None = None
    on_return: Literal["reimage", "power_cycle"] = "reimage"
    purpose: Annotated[str, Field(max_length=500, pattern=TEXT_PATTERN)] | None = None
    project: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> LeaseRequest:
        if self.board is not None and self.selector is not None:
            raise ValueError("name a board or give a selector, not both")
        if self.board is not None and self.count != 1:
            raise ValueError("a lease of a board by name has count 1")
        return self


@dataclass(frozen=True, kw_only=True)
class Caller:
    """Who asks: a person's or a run's token (``role`` user, operator, admin,
    or the local CLI as admin), or a lease's own token (``role`` holder,
    ``lease`` its lease)."""

    name: str
    role: str
    lease: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def manages(self, lease: dict) -> bool:  # type: ignore[type-arg]
        """Whether this caller may renew, heartbeat or release ``lease``."""
        if self.role == Role.HOLDER:
            return self.lease == lease["name"]
        return self.is_admin or self.name == lease["owner"]


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None

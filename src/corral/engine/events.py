"""What the engine takes and gives: events to fire, their results, and how
an outcome is kept for idempotent replay. No database, no engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from corral import names
from corral.errors import (
    AuthError,
    Conflict,
    CorralError,
    EventNotAllowed,
    Forbidden,
    InvalidRequest,
    UnknownMachine,
)

Clock = Callable[[], datetime]
FORCE_EVENT = "force_state"
CREATE_EVENT = "create"
# Who fires an event from each history source, when the caller names no role
# (an admin token names Role.ADMIN): the one table, in corral.names.
SOURCE_ROLES: dict[str, str] = {source.value: role.value
                                for source, role in names.SOURCE_ROLES.items()}


def utcnow() -> datetime:
    return datetime.now(UTC)


def outcome_label(outcome: object) -> str:
    if isinstance(outcome, FireResult):
        return "replayed" if outcome.replayed else "accepted"
    if isinstance(outcome, UnknownMachine):
        return "unknown"
    return "refused"


@dataclass(frozen=True, kw_only=True)
class FireResult:
    """What an event did. ``ignored`` results changed no machine state."""

    kind: str
    name: str
    event: str
    from_state: str
    to_state: str
    epoch: int
    entered: bool
    operations: tuple[str, ...] = ()
    ignored: bool = False
    note: str | None = None
    replayed: bool = False



class Observer:
    """Receives what the engine does, for metrics. The default does nothing."""

    def event(self, kind: str, event: str, source: str, outcome: str) -> None:
        """``outcome``: accepted, refused, unknown or replayed."""

    def committed(self, seconds: float, events: int) -> None:
        """A transaction carrying ``events`` events committed after ``seconds``."""

    def timeout(self, kind: str, lag_seconds: float) -> None:
        """A timeout fired ``lag_seconds`` after its deadline."""

    def operation(self, kind: str, outcome: str) -> None:
        """An operation finished: ok, failed, stale, retry."""


@dataclass(frozen=True, kw_only=True)
class FireRequest:
    """One event to fire (see :meth:`Engine.fire`)."""

    kind: str
    name: str
    event: str
    source: str
    payload: Any = None
    actor: str | None = None
    reason: str | None = None
    # (scope, key): a repeat of the same pair replays the first outcome.
    idempotency: tuple[str, str] | None = None
    # Who fires it (a transition's ``by``); None: the role of ``source``.
    role: str | None = None
    # Refuse it (AuthError, nothing changes) unless the machine is in one of
    # these states when locked: a reimage token's validity (replays of its
    # idempotency keys are still answered).
    only_in: frozenset[str] | None = None

    @property
    def firer(self) -> str:
        return self.role or SOURCE_ROLES.get(self.source, self.source)


def outcome_document(outcome: FireResult | CorralError, request: FireRequest
                     ) -> dict[str, Any]:
    """How an outcome is stored for idempotent replay, with the request it
    answered (a key reused for another machine or event is refused)."""
    used_for = {"request": {"kind": request.kind, "name": request.name,
                            "event": request.event}}
    if isinstance(outcome, FireResult):
        return used_for | {"result": {k: v for k, v in outcome.__dict__.items()
                                      if k != "replayed"}
                           | {"operations": list(outcome.operations)}}
    if isinstance(outcome, EventNotAllowed):
        return used_for | {"error": "event_not_allowed", "kind": outcome.kind,
                           "name": outcome.name, "state": outcome.state,
                           "event": outcome.event, "allowed": outcome.allowed}
    if isinstance(outcome, UnknownMachine):
        return used_for | {"error": "unknown_machine", "kind": outcome.kind,
                           "name": outcome.name}
    if isinstance(outcome, InvalidRequest):
        return used_for | {"error": "invalid_request", "message": str(outcome)}
    if isinstance(outcome, Forbidden):
        return used_for | {"error": "forbidden", "message": str(outcome), "role": outcome.role}
    if isinstance(outcome, AuthError):
        return used_for | {"error": "unauthorized", "message": str(outcome)}
    return used_for | {"error": "refused", "message": str(outcome)}


def check_key_reuse(document: Mapping[str, Any], request: FireRequest) -> None:
    """An idempotency key answers only a repeat of the request it was first used for.

    Raises:
        Conflict: the key was used for another machine or event (keys stored
            before the request was kept with them are not compared). A 409,
            not a 422: the request is well formed; what was stored refuses it.
    """
    first = document.get("request")
    if first is None:
        return
    now = {"kind": request.kind, "name": request.name, "event": request.event}
    if first != now:
        raise Conflict(
            f"Idempotency-Key {request.idempotency[1] if request.idempotency else ''!r} was "
            f"used for {first['kind']} {first['name']!r} event {first['event']!r}, not for "
            f"{now['kind']} {now['name']!r} event {now['event']!r}: use a new key for a "
            "new request")


def replay_outcome(document: Mapping[str, Any]) -> FireResult | CorralError:
    if "result" in document:
        fields = dict(document["result"])
        fields["operations"] = tuple(fields.get("operations", ()))
        return FireResult(**fields, replayed=True)
    error = document["error"]
    if error == "forbidden":
        return Forbidden(document["message"], role=document.get("role", ""))
    if error == "unauthorized":
        return AuthError(document["message"])
    if error == "event_not_allowed":
        return EventNotAllowed(document["kind"], document["name"], document["state"],
                               document["event"], list(document["allowed"]))
    if error == "unknown_machine":
        return UnknownMachine(document["kind"], document["name"])
    if error == "invalid_request":
        return InvalidRequest(document["message"])
    return CorralError(document.get("message", "refused"))


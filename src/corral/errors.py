"""Errors Corral reports to its users.

Every error a user can cause (a bad event, an unknown board, a malformed file)
is a :class:`CorralError` with a one-line message; the CLI and, later, the HTTP
API turn these into a clear message and an exit code or status, never a
traceback. ``exit_code`` follows the table in ``docs/operations.md``.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base class of every error meant for a user."""

    exit_code = 1


class ConfigError(CorralError):
    """A configuration value is missing, malformed or out of range."""

    exit_code = 2


class NotFound(CorralError):
    """A board, pool, job or state that does not exist."""

    exit_code = 3


class UnknownMachine(NotFound):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"unknown {kind} {name!r}")
        self.kind = kind
        self.name = name


class Conflict(CorralError):
    """The request is well formed but the machine's current state refuses it."""

    exit_code = 4


class EventNotAllowed(Conflict):
    def __init__(self, kind: str, name: str, state: str, event: str, allowed: list[str]) -> None:
        allowed_text = ", ".join(allowed) if allowed else "none (an operator must force a state)"
        super().__init__(
            f"event {event!r} is not allowed for {kind} {name!r} in state {state!r}; "
            f"allowed events: {allowed_text}"
        )
        self.kind = kind
        self.name = name
        self.state = state
        self.event = event
        self.allowed = allowed


class StateMismatch(Conflict):
    def __init__(self, kind: str, name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{kind} {name!r} is in state {actual!r}, not {expected!r}; nothing was changed"
        )
        self.expected = expected
        self.actual = actual


class InvalidRequest(CorralError):
    """A malformed request: an event payload missing a declared value, or a
    request a server refused as malformed."""

    exit_code = 2


class Unavailable(CorralError):
    """The database or the Corral server cannot be reached."""

    exit_code = 6


class Unsupported(CorralError):
    """What was asked is not available on this backend."""

    exit_code = 2


class AuthError(CorralError):
    """A server refused the token (missing, wrong, revoked or too small a role)."""

    exit_code = 7


class Forbidden(AuthError):
    """Who asked may not do this: the transition's ``by`` (or the state's, when
    forcing) does not name their role."""

    def __init__(self, message: str, *, role: str) -> None:
        super().__init__(message)
        self.role = role


class SchemaNotCurrent(CorralError):
    """The database schema is not at the revision this Corral expects."""

    exit_code = 5


class SchemaProblem(SchemaNotCurrent):
    """The database lacks a table or column this Corral uses."""


class DuplicateKey(Conflict):
    """A row with the same key was written by another transaction at the same
    time (the store's unique constraints refused this one); nothing changed.
    Callers that know what was being written say so in their own words."""

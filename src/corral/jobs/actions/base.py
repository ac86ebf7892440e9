"""What an action type is. One module per type; adding a type is one file
registered in ``corral.jobs.actions.TYPES``.

A type says how its v1 body is validated and written back (``parse`` /
``dump``; a type that a version cannot express has a later ``since``), what
is checked at dispatch when the lab is known (``check_dispatch``), and how it
runs: ``start`` does its side effect (an MO override, a lease request) and the
job then waits until the action is reported done, its own wait ends
(``wait_seconds``, for a hold), or the action timeout passes; ``stop`` undoes
what a failed or timed-out attempt left behind before it is tried again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from corral.jobs.checks import Checker


@dataclass(frozen=True, kw_only=True)
class Field:
    """One parameter, for validation messages and the spec reference."""

    name: str
    type: str
    required: bool
    description: str


class RunContext(Protocol):
    """What a running action may use (see ``corral.jobs.runner``)."""

    job: str
    pool: str | None

    def override(self, os_version: str) -> None: ...

    def mo_reachable(self) -> str | None: ...

    def lease_problem(self, params: Mapping[str, Any]) -> str | None: ...

    def request_lease(self, params: Mapping[str, Any]) -> str: ...

    def release_lease(self, lease: str) -> None: ...


class ActionType:
    key: str = ""
    since: int = 1
    """The first spec version (``corral/vN``) that can express this type."""
    summary: str = ""
    fields: tuple[Field, ...] = ()
    timeout_is_success: bool = False
    """True when the wait ending is the action's success (a hold)."""

    def parse(self, body: Any, path: str, check: Checker) -> dict[str, Any] | None:
        raise NotImplementedError

    def dump(self, params: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def check_spec(self, params: Mapping[str, Any], timeout_seconds: int, path: str,
                   check: Checker) -> None:
        """Checks across fields, once the action's timeout is known."""

    def check_dispatch(self, params: Mapping[str, Any], ctx: RunContext) -> str | None:
        """A lab-dependent problem, or None."""
        return None

    def dispatch_key(self, params: Mapping[str, Any]) -> str:
        """Actions with the same key are checked at dispatch once (MO answers
        for the pool whatever the version; each lease is checked)."""
        return self.key

    def start(self, params: Mapping[str, Any], ctx: RunContext) -> Mapping[str, Any] | None:
        """The action's side effect, if any; returns what the job keeps in its
        vars while the action runs (a lease's name), for ``stop`` and the
        watchers."""
        return None

    def stop(self, params: Mapping[str, Any], ctx: RunContext,
             started: Mapping[str, Any]) -> None:
        """Undo what a failed or timed-out attempt started (``started``: what
        ``start`` returned), before the action is tried again or the job ends."""

    def wait_seconds(self, params: Mapping[str, Any]) -> int | None:
        """How long the job waits before the action is done by itself (None: until
        it is reported done, or times out)."""
        return None

    def awaited_event(self, params: Mapping[str, Any]) -> str | None:
        """The external event that completes this action, if any."""
        return None

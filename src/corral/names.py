"""The names Corral gives things, each pattern written once, and the closed
sets of words it stores.

A name a user types or a board sends (a machine, a fabric, a job run, an
event) is checked against the one :class:`Identifier` here, whether the check
is a pydantic field, a FastAPI path parameter, a service's own check or the
definition loader. The words stored in ``operations.status`` and
``history.source``, and the roles that fire events and hold tokens, are enums
here.

Pure: no I/O, nothing but the standard library, so that any layer may import
it (the CLI's read commands included, which must start fast).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identifier:
    """A kind of name and the one pattern a value of it must match.

    ``pattern`` is anchored (``^...$``), the form pydantic's and FastAPI's
    ``pattern=`` take; ``regex`` is it compiled. Note that Python's ``$`` also
    matches before a final newline, so ``regex.match("x\\n")`` succeeds where
    ``regex.fullmatch`` and pydantic refuse: use :meth:`matches` (or
    ``fullmatch``) in new code.
    """

    what: str
    body: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern))

    @property
    def pattern(self) -> str:
        return f"^{self.body}$"

    def matches(self, value: object) -> bool:
        """Whether ``value`` is a string that is entirely a name of this kind."""
        return isinstance(value, str) and self.regex.fullmatch(value) is not None

    def named(self, what: str) -> Identifier:
        """The same pattern under another name (a board's name is a machine name)."""
        return Identifier(what, self.body)


# A machine's name: a board's (from the inventory), a pool's
# (testbed-cert-pool-1-f1) or a job's (job-17); at most 200 characters, the
# width of machines.name.
MACHINE_NAME = Identifier("machine name", r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
BOARD_NAME = MACHINE_NAME.named("board name")
POOL_NAME = MACHINE_NAME.named("pool name")
# A lease's name (lease-17), the name of its machine.
LEASE_NAME = MACHINE_NAME.named("lease name")
# A webhook subscription shares the machines' rule for names.
WEBHOOK_NAME = MACHINE_NAME.named("webhook name")

# A fabric: part of a pool's name, shaped like a DNS label (lowercase, at
# most 63 characters, the width of jobs.fabric).
FABRIC_NAME = Identifier("fabric name", r"[a-z0-9][a-z0-9-]{0,62}")

# The name a job holds pools under: a job machine's name, or the id of a job
# run from outside Corral (which may hold ':'); at most 64 characters, the
# width of pool_assignments.job_run_id.
JOB_RUN_ID = Identifier("job run id", r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

# A name in a state machine definition: a kind, state, event, operation,
# counter or var; at most 63 characters (history.event holds 64). An event's
# name is also a path segment of the callback URL.
DEFINITION_NAME = Identifier("definition name", r"[a-z][a-z0-9_]{0,62}")
EVENT_NAME = DEFINITION_NAME.named("event name")

# What a job's waitForEventAction waits for and `corral job signal` sends: not
# a machine event, so it may also hold '.' and '-'.
SIGNAL_NAME = Identifier("signal name", r"[a-z][a-z0-9_.-]{0,62}")

# An OS snapshot version MO rolls out to a pool (a job's osOverrideAction, a
# Maize snapshot's release): no spaces, at most 200 characters.
OS_VERSION = Identifier("OS version", r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")

# A history row's id as the event stream sends it (its SSE ``id``), which a
# reconnecting client returns in Last-Event-ID; at most 18 digits, so that
# any value fits a signed 64-bit column.
HISTORY_ID = Identifier("history id", r"[0-9]{1,18}")

# Where a webhook delivers: http:// or https://, an optional user, a host (a
# DNS name or an IPv6 literal in brackets, as RFC 3986 spells them), an
# optional port (0-65535) and a path, query or fragment in printable ASCII
# (no spaces or control characters: a URL is percent-encoded). Every URL it
# takes gives urllib.parse.urlsplit a host and a port it can read.
_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = rf"(?:{_H16}:{_H16}|{_OCTET}(?:\.{_OCTET}){{3}})"
_IPV6 = "(?:" + "|".join((
    rf"(?:{_H16}:){{6}}{_LS32}",
    rf"::(?:{_H16}:){{5}}{_LS32}",
    rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
    *(rf"(?:(?:{_H16}:){{0,{n}}}{_H16})?::(?:{_H16}:){{{4 - n}}}{_LS32}"
      for n in (1, 2)),
    rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
    rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
    rf"(?:(?:{_H16}:){{0,6}}{_H16})?::")) + ")"
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
WEBHOOK_URL = Identifier("webhook URL", (
    "https?://"
    "(?:[A-Za-z0-9._~!$&'()*+,;=%:-]*@)?"      # user (and password)
    rf"(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\[{_IPV6}\])"   # host
    f"(?::{_PORT})?"
    "(?:[/?#][!-~]*)?"))                       # path, query, fragment
MAX_WEBHOOK_URL = 2000

# A boot object's content address: the lowercase hex SHA-256 of its bytes.
SHA256_HEX = Identifier("sha256", r"[0-9a-f]{64}")


class OperationStatus(enum.StrEnum):
    """An outbox operation's status (the ``operations.status`` column)."""

    PENDING = "pending"  # written with its transition; runs once run_after has passed
    RUNNING = "running"  # leased by a worker until lease_expires_at
    DONE = "done"
    FAILED = "failed"
    STALE = "stale"  # its result came for a state entry the machine had already left


# Operations a worker may still run (a running one whose lease expired runs again).
OPEN_OPERATION_STATUSES = (OperationStatus.PENDING, OperationStatus.RUNNING)
# Operations that are over: their results are in, and retention may delete them.
FINISHED_OPERATION_STATUSES = (OperationStatus.DONE, OperationStatus.FAILED,
                               OperationStatus.STALE)


class Source(enum.StrEnum):
    """Where a history row's event came from (the ``history.source`` column)."""

    CALLBACK = "callback"  # a board, over the HTTP callback endpoint
    TIMEOUT = "timeout"  # the deadline sweep
    OPERATION = "operation"  # a worker's operation result, or a service's bookkeeping
    OPERATOR = "operator"  # the CLI, the operator API, or a service acting for one


class Role(enum.StrEnum):
    """Who acts: a transition's ``by:`` names some of these, a token holds one."""

    BOARD = "board"  # a board's own token: its second stage's events
    REIMAGE = "reimage"  # a board's token for one reimage, on its kernel command line
    HOLDER = "holder"  # a lease's token: the events its holder may fire at its boards
    VIEWER = "viewer"
    USER = "user"  # someone who leases boards (a test run, a developer)
    OPERATOR = "operator"
    ADMIN = "admin"
    OPERATION = "operation"  # a worker reporting a result; no token holds it
    TIMEOUT = "timeout"  # the deadline sweep; no token holds it
    LEASE = "lease"  # the lease scheduler (docs/leases.md); no token holds it
    HEALTH = "health"  # the health pass (docs/health.md); no token holds it


# Who may be named in a transition's `by:` (docs/state-machines.md).
FIRERS = (Role.BOARD, Role.OPERATOR, Role.ADMIN, Role.OPERATION, Role.TIMEOUT, Role.HOLDER,
          Role.LEASE, Role.HEALTH)
# The firers a person acts as (an operator token, an admin token, the local CLI).
HUMAN_FIRERS = (Role.OPERATOR, Role.ADMIN)
# The roles an operator token may be created with (a board's tokens get theirs).
TOKEN_ROLES = (Role.VIEWER, Role.USER, Role.OPERATOR, Role.ADMIN)
# Who fires an event from each source when the caller names no role (an admin
# token names Role.ADMIN).
SOURCE_ROLES = {Source.CALLBACK: Role.BOARD, Source.OPERATOR: Role.OPERATOR,
                Source.OPERATION: Role.OPERATION, Source.TIMEOUT: Role.TIMEOUT}

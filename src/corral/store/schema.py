"""The tables every machine kind shares: machines, history and operations.

Boards, pools and jobs are all rows of ``machines`` told apart by ``kind``;
their transitions go to ``history`` and their side effects to ``operations``
(the outbox). A new machine kind therefore needs a definition file, not a new
table. Later kinds keep their own extra tables (pool assignments, job specs)
beside these, keyed by the machine row.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text, which sorts
    and compares correctly because every value is written in the same format;
    MariaDB and MySQL store naive UTC ``DATETIME(6)`` (microseconds; the
    session time zone is UTC).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        if dialect.name != "postgresql":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JSONText(TypeDecorator[Any]):
    """JSON kept as text (MariaDB and MySQL: ``LONGTEXT``).

    MariaDB's own ``JSON`` is ``LONGTEXT`` with a ``JSON_VALID`` check that
    refuses documents nested 32 levels or more, which a stored job spec (a
    32-level context inside its stages and actions) or an operation payload
    (the event's payload inside the operation's) can reach. Corral checks
    every value it stores itself (:func:`corral.payload.check_json`) and
    writes only what ``json.dumps`` gives, so the column takes the text as it
    is; the JSON functions (``JSON_EXTRACT`` for a pool's fabric) read it
    the same.
    """

    impl = mysql.LONGTEXT
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        from corral.store.driver import loads_json

        return loads_json(value)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONDoc: Any = (JSON().with_variant(JSONB(), "postgresql")
                .with_variant(JSONText(), "mysql", "mariadb"))
# SQLite only auto-increments INTEGER PRIMARY KEY columns.
BigID: Any = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

machines = Table(
    "machines",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    Column("state", String(64), nullable=False),
    Column("state_entered_at", UTCDateTime, nullable=False),
    # When the current state times out; NULL for states without a timeout.
    Column("deadline", UTCDateTime, nullable=True),
    Column("counters", JSONDoc, nullable=False),
    # Increases by one every time the machine enters a state (re-entry too);
    # an operation result carrying an older epoch is stale.
    Column("epoch", BigInteger, nullable=False),
    # Inventory and settings (arch, subarch, mac, power and poll settings...).
    Column("attrs", JSONDoc, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Values events carried for later states (a transition's ``vars``): a
    # pool's override version and TTL, read by its operations.
    Column("vars", JSONDoc, nullable=False, server_default="{}"),
    UniqueConstraint("kind", "name"),
    Index("ix_machines_deadline", "deadline"),
    Index("ix_machines_kind_state", "kind", "state"),
)

history = Table(
    "history",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    # No foreign key, here or on operations: rows are written only in the
    # transaction that holds the machine's lock, and the check cost 0.18 ms of
    # server time per event (docs/performance.md).
    Column("machine_id", BigID, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("from_state", String(64), nullable=False),
    Column("to_state", String(64), nullable=False),
    Column("event", String(64), nullable=False),
    # callback | timeout | operation | operator
    Column("source", String(16), nullable=False),
    Column("actor", String(200), nullable=True),
    Column("reason", Text, nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Column("payload", JSONDoc, nullable=True),
    Column("operation_id", BigID, nullable=True),
    Index("ix_history_machine_id_id", "machine_id", "id"),
)

# MariaDB and MySQL take history ids from this one row, as the last write of
# a transaction, so that ids commit in id order (store/mysql.py); the row
# lock is held from there to the commit. Unused on SQLite and PostgreSQL.
history_counter = Table(
    "history_counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", BigInteger, nullable=False),
)

operations = Table(
    "operations",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("machine_id", BigID, nullable=False),
    # The machine's epoch when the operation was written; results are applied
    # only while the machine is still in that state entry.
    Column("machine_epoch", BigInteger, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("payload", JSONDoc, nullable=False),
    # pending -> running -> done | failed | stale
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("run_after", UTCDateTime, nullable=False),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("result", JSONDoc, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_operations_status_run_after", "status", "run_after"),
    Index("ix_operations_machine_id", "machine_id"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    # Operator tokens are named by their owner; a board's token is "board:NAME".
    Column("name", String(200), nullable=False, unique=True),
    # board | viewer | operator | admin
    Column("role", String(16), nullable=False),
    Column("machine_id", BigID, nullable=True),
    # SHA-256 of the secret part; the secret itself is shown once and never stored.
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

# How many machines each (kind, state) holds, recounted every few seconds by
# a worker, so that /metrics reads a few rows instead of counting every machine.
machine_state_counts = Table(
    "machine_state_counts",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("state", String(64), primary_key=True),
    Column("machines", BigInteger, nullable=False),
    Column("counted_at", UTCDateTime, nullable=False),
    # When the machine longest in this state entered it (stuck work).
    Column("oldest_entered_at", UTCDateTime, nullable=True),
)

# Who holds each command slot of a power controller (a PDU, a relay bank, a
# BMC): a row per slot, taken by an operation for as long as it talks to the
# controller, so that every engine process sees the same holders. A holder
# that dies leaves an expiry that frees the slot.
controller_slots = Table(
    "controller_slots",
    metadata,
    Column("controller", String(200), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("holder", String(200), nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
)

# Webhook subscriptions: each follows the history table with its own cursor
# (the last history id it has delivered or passed over), so the table itself
# is their outbox: at least once, in id order, whatever dies in between.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("url", Text, nullable=False),
    Column("filters", JSONDoc, nullable=False),
    # The HMAC key deliveries are signed with; never shown once stored.
    Column("secret", Text, nullable=False),
    Column("cursor", BigInteger, nullable=False),
    Column("delivered", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("failures", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # Whose key it is (the token's name): two clients never share a key space.
    Column("scope", String(200), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("machine_id", BigID, nullable=True),
    # The first request's outcome, replayed for every repeat.
    Column("outcome", JSONDoc, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # Keys are forgotten oldest first (idempotency_key_hours).
    Index("ix_idempotency_keys_created_at", "created_at"),
)

pool_assignments = Table(
    "pool_assignments",
    metadata,
    # Which job holds which pool (docs/pools.md). The primary key is the guarantee
    # that a pool has one holder; rows change only in the transaction that
    # also moves the pool machine (assign, release), under its row lock.
    Column("cb_pool_name", String(128), primary_key=True),
    Column("job_run_id", String(64), nullable=False),
    Column("assigned_at", UTCDateTime, nullable=False),
    Index("ix_pool_assignments_job_run_id", "job_run_id"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    # The job machine's name (job-<id>), also its job_run_id for pools.
    Column("name", String(64), nullable=False, unique=True),
    # The spec exactly as submitted, with its version and format...
    Column("api_version", String(32), nullable=False),
    Column("format", String(8), nullable=False),
    Column("spec_text", Text, nullable=False),
    # ...and its internal form, which is what runs.
    Column("spec", JSONDoc, nullable=False),
    Column("job_name", String(200), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("fabric", String(63), nullable=True),
    Column("submitted_at", UTCDateTime, nullable=False),
    Column("submitted_by", String(200), nullable=True),
    Column("failure_comment", Text, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_jobs_priority_id", "priority", "id"),
)

# Leases (docs/leases.md): a test run's request for boards, beside the lease
# machine's row (same name); its state is the machine's.
leases = Table(
    "leases",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    # Who asked (the token's name), and whose share of the boards it counts
    # against (its project, else its owner).
    Column("owner", String(200), nullable=False),
    Column("share", String(200), nullable=False),
    Column("priority", Integer, nullable=False),
    # What it asks for: one board by name, or `count` boards matching `selector`.
    Column("board", String(200), nullable=True),
    Column("selector", Text, nullable=True),
    Column("count", Integer, nullable=False),
    Column("release", String(200), nullable=True),
    Column("duration_s", Integer, nullable=False),
    Column("heartbeat_s", Integer, nullable=True),
    Column("on_return", String(16), nullable=False),
    Column("purpose", Text, nullable=True),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("wait_until", UTCDateTime, nullable=True),
    Column("activated_at", UTCDateTime, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("heartbeat_at", UTCDateTime, nullable=True),
    Column("warned_at", UTCDateTime, nullable=True),
    # released | expired | heartbeat | revoked | failed | cancelled | wait_timeout
    Column("ended_by", String(16), nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    Index("ix_leases_share", "share"),
    Index("ix_leases_owner", "owner"),
)

# Which boards each lease held and when: the audit of who held a board at a
# time (`corral board holders`), and the board-time fair share counts.
lease_boards = Table(
    "lease_boards",
    metadata,
    Column("lease_id", BigID, primary_key=True),
    Column("board", String(200), primary_key=True),
    # The board's lease epoch this lease got (board_holds.epoch).
    Column("epoch", BigInteger, nullable=False),
    Column("held_at", UTCDateTime, nullable=False),
    Column("released_at", UTCDateTime, nullable=True),
    Index("ix_lease_boards_board_held_at", "board", "held_at"),
)

# Each board's lease epoch and its holder. The primary key is the guarantee
# that a board has at most one holder; rows change only in the lease
# scheduler's pass, under the board machine's row lock. The epoch grows at
# every allocation and never goes back, so a token from an earlier hold never
# matches again (fencing).
board_holds = Table(
    "board_holds",
    metadata,
    Column("board", String(200), primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("lease_id", BigID, nullable=True),
    Column("since", UTCDateTime, nullable=True),
)

bootres_imports = Table(
    "bootres_imports",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    # running | published | failed
    Column("status", String(16), nullable=False),
    Column("storage", Text, nullable=False),
    Column("sources", JSONDoc, nullable=False),
    Column("snapshot", String(64), nullable=True),
    Column("error", Text, nullable=True),
)

bootres_published = Table(
    "bootres_published",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("import_id", BigID, nullable=False),
    Column("arch", String(64), nullable=False),
    Column("subarch", String(64), nullable=False),
    Column("release", String(64), nullable=False),
    Column("source", Text, nullable=False),
    Column("product", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    Index("ix_bootres_published_import_id", "import_id"),
)

# Health checks (docs/health.md): every judged check, each board's health
# beside its machine, and the shared equipment (power controllers, the
# netboot server) the health pass found degraded.
health_results = Table(
    "health_results",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("board", String(200), nullable=False),
    Column("check_name", String(64), nullable=False),
    # passed | failed
    Column("outcome", String(16), nullable=False),
    # passed | suspect | failed | unknown
    Column("decision", String(16), nullable=False),
    # none | board | image | controller | netboot
    Column("blame", String(16), nullable=False),
    Column("step", String(32), nullable=True),
    Column("equipment", String(200), nullable=True),
    Column("image", String(200), nullable=True),
    Column("reason", Text, nullable=True),
    Column("rule", Text, nullable=False),
    # The history row the check's result came with.
    Column("history_id", BigID, nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_health_results_board_id", "board", "id"),
    Index("ix_health_results_equipment_at", "equipment", "at"),
    Index("ix_health_results_at", "at"),
)

board_health = Table(
    "board_health",
    metadata,
    Column("board", String(200), primary_key=True),
    Column("check_name", String(64), nullable=True),
    Column("checked_at", UTCDateTime, nullable=True),
    Column("passed_at", UTCDateTime, nullable=True),
    # How many checks in a row this board has failed (picks the next
    # known-good image), and the burn-in checks still to run.
    Column("attempt", Integer, nullable=False),
    Column("loop", Integer, nullable=False),
    # The rule that decided its last check (`corral board explain`).
    Column("rule", Text, nullable=True),
    # Its judged checks up to this id no longer count towards k of n (an
    # operator asked for a check: the board was repaired).
    Column("counted_after", BigInteger, nullable=True),
)

equipment_health = Table(
    "equipment_health",
    metadata,
    Column("equipment", String(200), primary_key=True),
    # degraded | ok
    Column("state", String(16), nullable=False),
    Column("since", UTCDateTime, nullable=False),
    # When one of its boards (the canary) is checked again, and the wait
    # after that, doubled at each failed probe.
    Column("retry_at", UTCDateTime, nullable=True),
    Column("backoff_s", Integer, nullable=False),
    Column("reason", Text, nullable=True),
)

# Serial console capture (docs/console-capture.md). A board's console is kept
# per boot attempt: an attempt begins when the board enters a boot state (its
# history row) and is numbered 1, 2, ... per board.
console_attempts = Table(
    "console_attempts",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("board", String(200), nullable=False),
    Column("attempt", Integer, nullable=False),
    # The history row of the boot that began it (NULL: output seen before
    # any boot the capture knew of, e.g. when capture started).
    Column("history_id", BigInteger, nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Characters written in all (offsets count from the attempt's start), and
    # how many of the first ones were dropped to keep the board under its
    # console_max_bytes; bytes counts the UTF-8 size of what is kept.
    Column("chars", BigInteger, nullable=False),
    Column("dropped", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    UniqueConstraint("board", "attempt"),
)

# The text of an attempt, in the pieces it arrived in (already redacted).
console_chunks = Table(
    "console_chunks",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("attempt_id", BigInteger, nullable=False),
    # Character offset of the piece's first character within its attempt.
    Column("start", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_console_chunks_attempt_id_start", "attempt_id", "start"),
)

# Which engine process captures each board's console: a lease (owner, until)
# the capturing process renews, so that one process reads each console and
# another takes over when it dies.
console_claims = Table(
    "console_claims",
    metadata,
    Column("board", String(200), primary_key=True),
    Column("owner", String(200), nullable=True),
    Column("until", UTCDateTime, nullable=True),
)

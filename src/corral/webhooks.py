"""Webhooks: every history row that matches a subscription, POSTed to its URL.

A subscription follows the history table with its own cursor (the last id it
delivered or passed over), so the table is its outbox: nothing is written per
event, and nothing is lost when a process dies. A worker process leases a
subscription (one at a time per subscription, so its events leave in id
order, and so in order per machine), reads the matching rows after its cursor
up to the event stream's settled horizon (:mod:`corral.stream`), POSTs
them one by one, and moves the cursor past each one its receiver accepted
(any 2xx). A delivery that fails is tried again after a backoff that doubles
up to ``max_backoff``; after ``failing_after`` failures in a row the
subscription is marked ``failing`` with its last error (``/metrics``, the
console, ``corral webhook list``), and still retried. A process killed
between a POST and the cursor's commit leaves the lease to expire: the event
is sent again, which is why receivers deduplicate by ``Corral-Event-Id``
(delivery is at least once).

Each POST is signed (``Corral-Signature: t=<unix time>,v1=<hex>``, the hex
HMAC-SHA256 of ``"<t>." + body`` with the subscription's secret), so that a
receiver can check it came from Corral and refuse replays of old deliveries
(docs/http-api.md#webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog

from corral.errors import InvalidRequest, NotFound
from corral.names import WEBHOOK_NAME
from corral.store.port import Store
from corral.stream import FILTERS, PAGE, event_document, next_cursor, settled_horizon
from corral.webhook_targets import (
    Target,
    TargetPolicy,
    TargetRefused,
    check_url,
    excerpt,
    redact_url,
)

log = structlog.get_logger("corral.webhooks")
SIGNATURE = "Corral-Signature"
EVENT_ID = "Corral-Event-Id"


def signature(secret: str, body: bytes, at: int) -> str:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, now: float | None = None,
           tolerance: float = 300.0) -> bool:
    """What a receiver does: the signature matches and is at most
    ``tolerance`` seconds old (a replayed delivery is refused)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        at = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - at) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, body, at), header)


def check_filters(filters: Mapping[str, Any]) -> dict[str, list[str]]:
    """Raises: InvalidRequest naming the allowed keys."""
    clean: dict[str, list[str]] = {}
    for key, values in filters.items():
        if key not in FILTERS:
            raise InvalidRequest(f"unknown filter {key!r}; filters: {', '.join(FILTERS)}")
        listed = [values] if isinstance(values, str) else values
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise InvalidRequest(f"filter {key} must be a string or a list of strings")
        clean[key] = list(listed)
    return clean


NAME_RE = WEBHOOK_NAME.regex


def add_subscription(engine: Any, *, name: str | None, url: str, filters: Mapping[str, Any],
                     secret: str, from_start: bool = False) -> dict[str, Any]:
    """Create a subscription; it starts after the newest event (or, with
    ``from_start``, before the oldest kept).

    Raises:
        InvalidRequest: a bad name, URL, filter or secret.
        Conflict: the name is taken.
    """
    from corral.errors import Conflict, DuplicateKey
    from corral.payload import check_json

    check_json({"name": name, "url": url, "filters": dict(filters), "secret": secret},
               "webhook", max_bytes=64 * 1024)
    check_url(url)
    if len(secret) < 16:
        raise InvalidRequest("a webhook secret has at least 16 characters")
    clean = check_filters(filters)
    cursor = 0 if from_start else settled_horizon(engine.store)
    if name is None:
        with engine.store.unit() as tx:
            name = f"hook-{len(tx.webhooks.list()) + 1}"
    if not NAME_RE.fullmatch(name):
        raise InvalidRequest(f"a webhook name is letters, digits, '.', '_' and '-', not "
                             f"{name!r}")
    try:
        with engine.store.unit() as tx:
            tx.webhooks.add(name=name, url=url, filters=clean, secret=secret, cursor=cursor,
                           now=engine.clock())
    except DuplicateKey:
        raise Conflict(f"a webhook named {name!r} exists") from None
    return {"name": name, "url": redact_url(url), "filters": clean, "cursor": cursor}



# What only delivery uses: the row's key and who holds its lease until when.
_BOOKKEEPING = ("id", "lease_owner", "lease_until")


def list_subscriptions(store: Store) -> list[dict[str, Any]]:
    """Every subscription, by name: URL, filters, status, failures in a row,
    last error, cursor, deliveries, next attempt (never the secret, nor the
    delivery lease)."""
    with store.unit() as tx:
        hooks = tx.webhooks.list()
    return [{k: (redact_url(v) if k == "url" else v) for k, v in hook.items()
             if k not in _BOOKKEEPING} for hook in hooks]


def remove_subscription(store: Store, name: str) -> None:
    """Delete a subscription (its deliveries stop; the history stays).

    Raises:
        NotFound: no subscription has that name.
    """
    with store.unit() as tx:
        removed = tx.webhooks.remove(name)
    if not removed:
        raise NotFound(f"no webhook {name!r}")


# The most of a target's answer read (the rest is never downloaded); what is
# kept of it in last_error is an excerpt of this.
ANSWER_BYTES = 64 * 1024


class WebhookDelivery:
    def __init__(self, store: Store, clock: Callable[[], datetime], *, owner: str,
                 timeout: float = 10.0, lease_seconds: float = 60.0, failing_after: int = 5,
                 max_backoff: float = 300.0, batch: int = PAGE,
                 policy: TargetPolicy | None = None) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.timeout = timeout
        self.lease_seconds = lease_seconds
        self.failing_after = failing_after
        self.max_backoff = max_backoff
        self.batch = batch
        self.policy = policy or TargetPolicy()

    def deliver_pass(self) -> int:
        """Deliver what is due for every subscription this process can lease;
        returns how many events were accepted. One subscription's failure
        (its target down or refused, its stored URL unusable) is its own: the
        others are delivered all the same."""
        now = self.clock()
        with self.store.unit() as tx:
            hooks = tx.webhooks.claim(now=now, owner=self.owner, limit=16,
                                      until=now + timedelta(seconds=self.lease_seconds))
        if not hooks:
            return 0
        horizon = settled_horizon(self.store)
        delivered = 0
        for hook in hooks:
            try:
                target = self.policy.target(hook["url"])
            except TargetRefused as refused:
                self._finish(hook, cursor=int(hook["cursor"]), delivered=0,
                             error=excerpt(str(refused), 300), refused=True)
                continue
            try:
                delivered += self._deliver(hook, target, horizon)
            except Exception as exc:  # one subscription never stops the rest
                # The type only: a message may carry the URL, password and all.
                log.error("webhook_pass_failed", webhook=hook["name"],
                          error=type(exc).__name__)
                self._finish(hook, cursor=int(hook["cursor"]), delivered=0,
                             error=f"delivery failed: {type(exc).__name__}")
        return delivered

    def _deliver(self, hook: Mapping[str, Any], target: Target, horizon: int) -> int:
        import httpx

        cursor = int(hook["cursor"])
        filters: Mapping[str, Sequence[str]] = hook["filters"] or {}
        with self.store.unit() as tx:
            rows = tx.stream.read(after=cursor, upto=horizon, limit=self.batch,
                                     filters=filters)
        delivered, error = 0, None
        deadline = time.monotonic() + self.lease_seconds / 2
        with httpx.Client(timeout=self.timeout, follow_redirects=False,
                          trust_env=False) as client:
            for row in rows:
                if time.monotonic() > deadline:
                    break  # the rest in the next pass, well within the lease
                body = json.dumps(event_document(row), separators=(",", ":"),
                                  ensure_ascii=False).encode()
                headers = {**target.headers, "Content-Type": "application/json",
                           EVENT_ID: str(row.entry.id),
                           SIGNATURE: signature(hook["secret"], body, int(time.time())),
                           "User-Agent": "corral-webhook"}
                error = _post(client, target, body, headers, deadline)
                if error is not None:
                    break
                cursor = row.entry.id
                delivered += 1
            else:
                # Every matching row up to the horizon is out: pass the others.
                cursor = next_cursor(rows, cursor=cursor, horizon=horizon, limit=self.batch)
        self._finish(hook, cursor=cursor, delivered=delivered,
                     error=None if error is None else _without_password(error, hook["url"]))
        return delivered

    def _finish(self, hook: Mapping[str, Any], *, cursor: int, delivered: int,
                error: str | None, refused: bool = False) -> None:
        """Record the pass. A refused target is failing at once and looked at
        again after the longest backoff (the policy, or the name's address,
        may change)."""
        failures = 0 if error is None else int(hook["failures"]) + 1
        status = "failing" if failures >= self.failing_after or refused else "ok"
        backoff = (self.max_backoff if refused
                   else min(self.max_backoff, 2.0 ** (failures - 1)) if failures else 0.0)
        with self.store.unit() as tx:
            kept = tx.webhooks.finish_pass(
                hook["id"], owner=self.owner, cursor=cursor, delivered=delivered,
                failures=failures, status=status,
                last_error=error if error else (hook["last_error"] if failures else None),
                next_attempt_at=self.clock() + timedelta(seconds=backoff))
        if error:
            log.warning("webhook_failed", webhook=hook["name"], failures=failures,
                        error=error, status=status)
        if not kept:
            log.warning("webhook_lease_lost", webhook=hook["name"])


def _post(client: Any, target: Target, body: bytes, headers: Mapping[str, str],
          deadline: float) -> str | None:
    """POST one event; None when accepted (any 2xx), else what went wrong:
    the status line and an excerpt of the answer, of which at most
    ANSWER_BYTES are read, and no longer than the pass may last."""
    import httpx

    try:
        with client.stream("POST", target.url, content=body, headers=headers,
                           extensions=target.extensions) as answer:
            text = b""
            for chunk in answer.iter_raw():
                text += chunk
                if len(text) >= ANSWER_BYTES or time.monotonic() > deadline:
                    break
            if 200 <= answer.status_code < 300:
                return None
            reason = excerpt(answer.reason_phrase, 40)
            return excerpt(f"HTTP {answer.status_code} {reason}: "
                           f"{text[:ANSWER_BYTES].decode('utf-8', 'replace')}", 300)
    except httpx.HTTPError as exc:
        return excerpt(f"{type(exc).__name__}: {exc}", 300)


def _without_password(text: str, url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, "***") if password else text

"""A typed Python client of Corral's HTTP API for the things test runs do:
lease boards, hold them, give them back (docs/leases.md).

    from corral.client import Corral

    with Corral("http://corral:8080", token) as corral:
        lease = corral.leases.request(selector="arch=arm64", count=2, duration=1800,
                                      wait=600)
        corral.leases.heartbeat(lease.id, token=lease.token)
        corral.leases.fire(lease.id, lease.boards[0], "reboot", token=lease.token)
        corral.leases.release(lease.id, token=lease.token)

Errors are Corral's own (:mod:`corral.errors`): 404 :class:`NotFound`, 409
:class:`Conflict`, 401 and 403 :class:`AuthError`, 422 :class:`InvalidRequest`,
anything else :class:`CorralError`; a server that cannot be reached is
:class:`Unavailable`. The CLI's ``--url`` mode answers with the same errors.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from corral.errors import AuthError, Conflict, CorralError, InvalidRequest, NotFound, Unavailable

ERRORS: dict[int, type[CorralError]] = {401: AuthError, 403: AuthError, 404: NotFound,
                                        409: Conflict, 422: InvalidRequest}
ENDED = ("returning", "closed", "cancelled", "expired", "revoked", "failed")


def answer(reply: httpx.Response) -> Any:
    """The JSON of a 2xx reply; else the reply's message as Corral's error."""
    try:
        body = reply.json()
    except ValueError:
        body = {}
    if 200 <= reply.status_code < 300:
        return body
    message = body.get("message") if isinstance(body, dict) else None
    raise ERRORS.get(reply.status_code, CorralError)(
        message or f"{reply.status_code} {reply.reason_phrase}")


@dataclass(frozen=True)
class Lease:
    """A lease as the server answered it (``token`` only from :meth:`Leases.request`)."""

    id: str
    state: str
    owner: str
    boards: list[str]
    expires_at: str | None
    token: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, doc: dict[str, Any], token: str | None = None) -> Lease:
        return cls(id=doc["id"], state=doc["state"], owner=doc["owner"],
                   boards=list(doc.get("boards") or []), expires_at=doc.get("expires_at"),
                   token=token or doc.get("token"), raw=doc)

    @property
    def active(self) -> bool:
        return self.state == "active"


class Corral:
    """A connection to one Corral server with one token."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})
        self.leases = Leases(self)

    def call(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            reply = self.http.request(method, path, headers=headers, **kw)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc}") from None
        return answer(reply)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Corral:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Leases:
    """``/api/v1/leases``. Calls that change a lease take ``token`` (the
    lease's own, from :meth:`request`) or use the connection's."""

    def __init__(self, corral: Corral) -> None:
        self.corral = corral

    def request(self, *, wait: float | None = None, poll: float = 1.0,
                **spec: Any) -> Lease:
        """Ask for boards (``board``, ``selector``, ``count``, ``duration``,
        ``release``, ``priority``, ``wait_timeout``, ``heartbeat``,
        ``on_return``, ``purpose``, ``project``: seconds for times). With
        ``wait``, block until the lease is active.

        Raises:
            Conflict: with ``wait``, the lease ended or did not become active
                in time (the lease is then released, so it holds nothing).
        """
        body = {k: v for k, v in spec.items() if v is not None}
        if wait is not None and "wait_timeout" not in body:
            body["wait_timeout"] = max(1, int(wait))
        lease = Lease.of(self.corral.call("POST", "/api/v1/leases", json=body))
        if wait is None:
            return lease
        return self.wait(lease, timeout=wait, poll=poll)

    def wait(self, lease: Lease, *, timeout: float, poll: float = 1.0) -> Lease:
        """Until ``lease`` is active. Raises: Conflict (it ended, or time ran out:
        it is released then)."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.show(lease.id, token=lease.token)
            if current.active:
                return Lease.of(current.raw, lease.token)
            if current.state in ENDED:
                raise Conflict(f"lease {lease.id} ended while waiting: {current.state}")
            if time.monotonic() >= deadline:
                self.release(lease.id, token=lease.token, reason="the wait timed out")
                raise Conflict(f"lease {lease.id} was not granted within {timeout:g} s; "
                               f"it was released")
            time.sleep(poll)

    def show(self, lease: str, *, token: str | None = None) -> Lease:
        return Lease.of(self.corral.call("GET", f"/api/v1/leases/{lease}", token=token))

    def list(self, *, state: str | None = None, owner: str | None = None,
             open: bool = False) -> list[Lease]:
        params: dict[str, Any] = {k: v for k, v in (("state", state), ("owner", owner))
                                  if v}
        if open:
            params["open"] = "true"
        return [Lease.of(d) for d in self.corral.call("GET", "/api/v1/leases", params=params)]

    def explain(self, lease: str, *, token: str | None = None) -> dict[str, Any]:
        return self.corral.call("GET", f"/api/v1/leases/{lease}/explain", token=token)

    def renew(self, lease: str, duration: int | None = None, *, token: str | None = None
              ) -> Lease:
        return Lease.of(self.corral.call("POST", f"/api/v1/leases/{lease}/renew", token=token,
                                         json={"duration": duration}))

    def heartbeat(self, lease: str, *, token: str | None = None) -> Lease:
        return Lease.of(self.corral.call("POST", f"/api/v1/leases/{lease}/heartbeat",
                                         token=token))

    def release(self, lease: str, *, token: str | None = None, reason: str | None = None
                ) -> Lease:
        return Lease.of(self.corral.call("POST", f"/api/v1/leases/{lease}/release",
                                         token=token, json={"reason": reason}))

    def revoke(self, lease: str, *, reason: str, if_state: str | None = None) -> Lease:
        return Lease.of(self.corral.call("POST", f"/api/v1/leases/{lease}/revoke",
                                         json={"reason": reason, "if_state": if_state}))

    def fire(self, lease: str, board: str, event: str, payload: dict[str, Any] | None = None,
             *, token: str | None = None) -> dict[str, Any]:
        """A holder's event (``reboot``, ``reimage``) at one of the lease's boards."""
        return self.corral.call("POST", f"/api/v1/leases/{lease}/boards/{board}/events/{event}",
                                token=token, json=payload)

    def board(self, lease: str, board: str, *, token: str | None = None) -> dict[str, Any]:
        return self.corral.call("GET", f"/api/v1/leases/{lease}/boards/{board}", token=token)

    def holders(self, board: str, *, at: str | None = None) -> builtins.list[dict[str, Any]]:
        return self.corral.call("GET", f"/api/v1/boards/{board}/holders",
                                params={"at": at} if at else None)

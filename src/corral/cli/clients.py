"""Where the operator commands get their answers: the database, or a server.

``corral board list`` and friends work the same against a local database
(:class:`LocalBoards`) or a remote Corral (:class:`RemoteBoards`, chosen by
``--url`` / ``CORRAL_URL`` with ``CORRAL_TOKEN``). Both return the same plain
documents, and a remote error becomes the same :class:`CorralError` (and so the
same message and exit code) as a local one.

Each side imports its stack when it is first used (the database's for local
commands, httpx for remote ones), so that a command starts quickly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from corral.errors import (
    AuthError,
    CorralError,
    Unavailable,
)
from corral.store.values import HistoryEntry

if TYPE_CHECKING:
    from corral.engine.core import Engine, FireResult
    from corral.engine.reads import Reads

# Machines per page when a list is read (and printed) page by page.
PAGE = 1000
HISTORY_FIELDS = ("id", "epoch", "at", "event", "from_state", "to_state", "source", "actor",
                  "reason", "payload", "operation_id")


class Boards(Protocol):
    def find(self, states: list[str] | None, failed: bool) -> Iterator[list[dict[str, Any]]]:
        """The machines by name, a page at a time."""
    def show(self, name: str) -> dict[str, Any]: ...
    def explain(self, name: str) -> dict[str, Any]: ...
    def history(self, name: str, limit: int, before: int | None) -> list[dict[str, Any]]: ...
    def fire(self, name: str, event: str, payload: Any, reason: str | None
             ) -> dict[str, Any]: ...
    def force_state(self, name: str, state: str, reason: str, if_state: str | None
                    ) -> dict[str, Any]: ...


def _transition(result: FireResult) -> dict[str, Any]:
    return {"name": result.name, "event": result.event, "from_state": result.from_state,
            "to_state": result.to_state, "epoch": result.epoch}


class LocalBoards:
    """The database itself: whoever holds its credentials has the admin role.

    Reads go through ``reads`` (on the bare driver where the database URL
    allows, see :mod:`corral.store.reader`); the engine is built only for a
    command that changes something.
    """

    def __init__(self, reads: Reads, engine: Callable[[], Engine], kind: str,
                 actor: str) -> None:
        self.reads, self._engine, self.kind, self.actor = reads, engine, kind, actor
        reads.machines[kind]

    @property
    def engine(self) -> Engine:
        return self._engine()

    def find(self, states: list[str] | None, failed: bool) -> Iterator[list[dict[str, Any]]]:
        after = None
        while True:
            rows = self.reads.list_machines(self.kind, states=states, failed=failed,
                                            after=after, limit=PAGE)
            if rows:
                yield [self.reads.describe(r) for r in rows]
            if len(rows) < PAGE:
                return
            after = rows[-1].name

    def show(self, name: str) -> dict[str, Any]:
        return self.reads.describe(self.reads.get(self.kind, name))

    def explain(self, name: str) -> dict[str, Any]:
        return self.engine.explain(self.kind, name)

    def history(self, name: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        entries: list[HistoryEntry] = self.reads.history(self.kind, name, limit=limit,
                                                         before_id=before)
        return [{k: getattr(e, k) for k in HISTORY_FIELDS} for e in entries]

    def fire(self, name: str, event: str, payload: Any, reason: str | None) -> dict[str, Any]:
        return _transition(self.engine.fire(self.kind, name, event, source="operator",
                                            payload=payload, actor=self.actor, reason=reason,
                                            role="admin"))

    def force_state(self, name: str, state: str, reason: str, if_state: str | None
                    ) -> dict[str, Any]:
        return _transition(self.engine.force_state(self.kind, name, state, actor=self.actor,
                                                   reason=reason, if_state=if_state,
                                                   role="admin"))


class RemoteBoards:
    """The operator API over HTTP; the token's name is recorded as the actor."""

    def __init__(self, url: str, token: str | None, kind: str = "board") -> None:
        if not token:
            raise AuthError("CORRAL_TOKEN must hold an operator token to use --url")
        self.kind = kind
        self.base = f"/api/v1/{kind}s"
        self.url = url.rstrip("/")
        import httpx

        self._transport_error = httpx.TransportError
        self.http = httpx.Client(base_url=self.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self.http.request(method, path, **kwargs)
        except self._transport_error as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc}") from None
        from corral.client import answer

        return answer(reply)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` to ``path`` of the server (a board action it has a route for)."""
        return self._call("POST", path, json=body)

    @staticmethod
    def _times(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
        for key in keys:
            if doc.get(key):
                doc[key] = datetime.fromisoformat(doc[key])
        return doc

    def find(self, states: list[str] | None, failed: bool) -> Iterator[list[dict[str, Any]]]:
        params: dict[str, Any] = {"failed": failed, "limit": PAGE}
        if states:
            params["state"] = states
        while True:
            page = self._call("GET", self.base, params=params)
            if page:
                yield [self._times(d, "state_entered_at", "deadline") for d in page]
            if len(page) < PAGE:
                return
            params["after"] = page[-1]["name"]

    def show(self, name: str) -> dict[str, Any]:
        return self._times(self._call("GET", f"{self.base}/{name}"),
                           "state_entered_at", "deadline")

    def explain(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"{self.base}/{name}/explain"))

    def history(self, name: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        page = self._call("GET", f"{self.base}/{name}/history", params=params)
        return [self._times(e, "at") for e in page["entries"]]

    @staticmethod
    def _transition(doc: dict[str, Any]) -> dict[str, Any]:
        return {"name": doc["name"], "event": doc["event"], "from_state": doc["from_state"],
                "to_state": doc["state"], "epoch": doc["epoch"]}

    def fire(self, name: str, event: str, payload: Any, reason: str | None) -> dict[str, Any]:
        return self._transition(self._call("POST", f"{self.base}/{name}/fire", json={
            "event": event, "payload": payload, "reason": reason}))

    def force_state(self, name: str, state: str, reason: str, if_state: str | None
                    ) -> dict[str, Any]:
        return self._transition(self._call("POST", f"{self.base}/{name}/force-state", json={
            "state": state, "reason": reason, "if_state": if_state}))


class LocalPools(LocalBoards):
    """Pool commands against the database (fleets, assignments, overrides)."""

    def __init__(self, engine: Engine, actor: str, default_ttl: int) -> None:
        super().__init__(engine.reads, lambda: engine, "pool", actor)
        from corral.pools import PoolService

        self.service = PoolService(engine, default_ttl=default_ttl)

    def create_fleet(self, fabric: str, count: int) -> list[str]:
        return [r.name for r in self.service.create_fleet(fabric, count, actor=self.actor)]

    def acquire(self, job: str, pool: str | None, count: int, fabric: str | None
                ) -> dict[str, Any]:
        held = (self.service.acquire(job, pool, actor=self.actor) if pool else
                self.service.acquire_any(job, count=count, fabric=fabric, actor=self.actor))
        return {"job_run_id": held.job_run_id, "pools": list(held.pools),
                "new": list(held.new)}

    def release(self, job: str, reason: str | None) -> list[str]:
        return self.service.release_all(job, actor=self.actor, reason=reason)

    def override(self, pool: str, job: str, os_version: str, ttl: int | None
                 ) -> dict[str, Any]:
        return _transition(self.service.override(pool, job_run_id=job, os_version=os_version,
                                                 ttl_seconds=ttl, actor=self.actor))

    def assignments(self, job: str | None) -> list[dict[str, Any]]:
        return [{"pool": a.pool, "job_run_id": a.job_run_id, "assigned_at": a.assigned_at}
                for a in self.service.assignments(job)]


class RemotePools(RemoteBoards):
    """The same pool commands over the HTTP API."""

    def __init__(self, url: str, token: str | None) -> None:
        super().__init__(url, token, "pool")

    def create_fleet(self, fabric: str, count: int) -> list[str]:
        return list(self._call("POST", "/api/v1/pool-fleets",
                               json={"fabric": fabric, "count": count}))

    def acquire(self, job: str, pool: str | None, count: int, fabric: str | None
                ) -> dict[str, Any]:
        return dict(self._call("POST", "/api/v1/pool-assignments", json={
            "job_run_id": job, "pool": pool, "count": count, "fabric": fabric}))

    def release(self, job: str, reason: str | None) -> list[str]:
        return list(self._call("POST", "/api/v1/pool-assignments/release",
                               json={"job_run_id": job, "reason": reason}))

    def override(self, pool: str, job: str, os_version: str, ttl: int | None
                 ) -> dict[str, Any]:
        return self._transition(self._call("POST", f"/api/v1/pools/{pool}/override", json={
            "job_run_id": job, "os_version": os_version, "ttl_seconds": ttl}))

    def assignments(self, job: str | None) -> list[dict[str, Any]]:
        params = {"job_run_id": job} if job else {}
        return [self._times(a, "assigned_at")
                for a in self._call("GET", "/api/v1/pool-assignments", params=params)]


class LocalJobs(LocalBoards):
    """Job commands against the database."""

    def __init__(self, engine: Engine, actor: str, default_ttl: int) -> None:
        super().__init__(engine.reads, lambda: engine, "job", actor)
        from corral.jobs.service import JobService

        self.service = JobService(engine, default_ttl=default_ttl)

    def show(self, name: str) -> dict[str, Any]:
        return self.service.describe(name)

    def submit(self, text: str, maize: bool, fabric: str | None) -> dict[str, Any]:
        result = (self.service.submit_maize(text, actor=self.actor, fabric=fabric) if maize
                  else self.service.submit(text, actor=self.actor))
        return {"name": result.name, "state": result.to_state}

    def cancel(self, name: str, reason: str | None) -> dict[str, Any]:
        return _transition(self.service.cancel(name, actor=self.actor, reason=reason))

    def signal(self, name: str, event: str) -> dict[str, Any]:
        return _transition(self.service.signal(name, event, actor=self.actor))

    def spec(self, name: str, api_version: str | None) -> dict[str, Any]:
        record = self.service.record(name)
        if api_version is None or api_version == record["api_version"]:
            return {"api_version": record["api_version"], "text": record["spec_text"]}
        from corral.jobs import versions

        doc = versions.convert(self.service.spec(name), api_version)
        return {"api_version": api_version, "text": versions.dumps(doc, "yaml")}


class RemoteJobs(RemoteBoards):
    """The same job commands over the HTTP API."""

    def __init__(self, url: str, token: str | None) -> None:
        super().__init__(url, token, "job")

    def show(self, name: str) -> dict[str, Any]:
        return self._times(super().show(name), "submitted_at", "finished_at")

    def submit(self, text: str, maize: bool, fabric: str | None) -> dict[str, Any]:
        if maize:
            from corral.jobs import versions

            _, doc = versions.parse_text(text)
            return dict(self._call("POST", "/api/v1/maize-snapshots", json=doc,
                                   params={"fabric": fabric} if fabric else {}))
        return dict(self._call("POST", "/api/v1/jobs", json={"spec": text}))

    def cancel(self, name: str, reason: str | None) -> dict[str, Any]:
        return self._transition(self._call("POST", f"/api/v1/jobs/{name}/cancel",
                                           json={"reason": reason}))

    def signal(self, name: str, event: str) -> dict[str, Any]:
        return self._transition(self._call("POST", f"/api/v1/jobs/{name}/signal",
                                           json={"event": event}))

    def spec(self, name: str, api_version: str | None) -> dict[str, Any]:
        params = {"api_version": api_version} if api_version else {}
        doc = self._call("GET", f"/api/v1/jobs/{name}/spec", params=params)
        return {"api_version": doc["api_version"], "text": doc["text"]}


def follow_remote(url: str, token: str | None, *, after: int | None,
                  filters: Mapping[str, Sequence[str]],
                  sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
    """``GET /api/v1/events`` as documents, reconnecting after a dropped
    connection (or a server restart) with ``Last-Event-ID`` set to the last
    event given out, so that nothing is missed or given twice.

    Raises:
        AuthError: the server refused the token.
    """
    import httpx

    if not token:
        raise AuthError("CORRAL_TOKEN must hold a viewer token to use --url")
    params: list[tuple[str, Any]] = [(k, v) for k, values in filters.items() for v in values]
    if after is not None:
        params.append(("after", after))
    last: int | None = None
    delay = 0.5
    while True:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        try:
            with httpx.stream("GET", f"{url.rstrip('/')}/api/v1/events", params=params,
                              headers=headers, timeout=httpx.Timeout(10, read=60)) as reply:
                if reply.status_code in (401, 403):
                    raise AuthError(json.loads(reply.read() or b"{}").get(
                        "message", f"{reply.status_code} from {url}"))
                if reply.status_code != 200:
                    body = reply.read()
                    raise CorralError(f"{url} answered {reply.status_code}: "
                                      f"{body[:300].decode(errors='replace')}")
                delay = 0.5
                for line in reply.iter_lines():
                    if line.startswith("data: "):
                        document = json.loads(line[6:])
                        last = int(document["id"])
                        yield document
        except (httpx.TransportError, httpx.HTTPError):
            pass  # dropped: resume after the last event given out
        sleep(delay)
        delay = min(delay * 2, 10.0)

"""The pool machine's operations, run by the outbox worker against MO.

``set_os_override`` starts a gradual rollout (SetComponentVersionOverride with
target = the pool's name, component OS, the version and TTL the ``override``
event stored in the pool's vars). ``check_rollout`` asks which version every
node reports (GetAppliedHostComponentVersions) and succeeds only when all of
them report the target. No database lock is held during either call.

MO being unreachable (UNAVAILABLE or DEADLINE_EXCEEDED after the client's own
retries) is transient: the worker retries the operation with backoff. Any
other MO error, and a rollout that has not converged, is a failure the pool
machine hears as ``<operation>_failed`` and counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from corral.mo.client import RETRYABLE, MoClient, MoError
from corral.mo.types import HostComponent, Override
from corral.operations.base import Handler, OperationContext, OperationFailed


class MoUnreachable(Exception):
    """MO did not answer in time; the operation is retried later."""


class MoOperations:
    def __init__(self, client: MoClient) -> None:
        self.client = client

    def handlers(self) -> dict[str, Handler]:
        return {"set_os_override": self.set_os_override, "check_rollout": self.check_rollout}

    @staticmethod
    def _version(ctx: OperationContext) -> str:
        version = ctx.vars.get("os_version")
        if not isinstance(version, str) or not version:
            raise OperationFailed(f"pool {ctx.name} has no os_version to roll out "
                                  "(was it forced into this state?)")
        return version

    def _call(self, call: Any) -> Any:
        try:
            return call()
        except MoError as exc:
            if exc.code in RETRYABLE:
                raise MoUnreachable(str(exc)) from None
            raise OperationFailed(str(exc), code=exc.code.name if exc.code else None
                                  ) from None

    def set_os_override(self, ctx: OperationContext) -> Mapping[str, Any]:
        version = self._version(ctx)
        ttl = ctx.vars.get("ttl_seconds")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise OperationFailed(f"pool {ctx.name} has no valid ttl_seconds ({ttl!r})")
        override = Override(target=ctx.name, component=HostComponent.OS, version=version,
                            ttl=timedelta(seconds=ttl))
        accepted = self._call(lambda: self.client.set_override(override))
        return {"os_version": version, "ttl_seconds": ttl,
                "expires_at": accepted.expires_at.isoformat()}

    def check_rollout(self, ctx: OperationContext) -> Mapping[str, Any]:
        version = self._version(ctx)
        applied = self._call(lambda: self.client.applied_versions(ctx.name))
        if applied.converged(version):
            return {"os_version": version, "nodes": len(applied.nodes)}
        lagging = applied.lagging(version)
        others = sorted({applied.nodes[n] for n in lagging})
        reason = (f"MO reports no nodes for pool {ctx.name}" if not applied.nodes else
                  f"{len(lagging)} of {len(applied.nodes)} nodes not on {version} "
                  f"(they report {', '.join(others)})")
        raise OperationFailed(reason, lagging=lagging[:50], nodes=len(applied.nodes),
                              reported=others[:10])

"""The MO gRPC client: the only place Corral's MO traffic touches protobuf.

Every call has a deadline; UNAVAILABLE and DEADLINE_EXCEEDED are retried with
exponential backoff (both are safe to retry: setting the same override twice
is idempotent, and reading is read-only). Other errors, and retries running
out, raise :class:`MoError` carrying the gRPC status code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC
from typing import TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from corral.errors import CorralError
from corral.mo.types import AppliedVersions, HostComponent, Override, OverrideAccepted
from corral.mo.v1 import host_version_pb2 as pb
from corral.mo.v1 import host_version_pb2_grpc as pb_grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
T = TypeVar("T")

_COMPONENTS: dict[HostComponent, pb.HostComponent] = {HostComponent.OS: pb.HOST_COMPONENT_OS}


class MoError(CorralError):
    """MO refused a call or could not be reached in time."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ conversions


def component_to_pb(component: HostComponent) -> pb.HostComponent:
    return _COMPONENTS[component]


def component_from_pb(value: int) -> HostComponent:
    for component, number in _COMPONENTS.items():
        if number == value:
            return component
    raise MoError(f"MO sent an unknown host component {value}")


def override_to_pb(override: Override) -> pb.SetComponentVersionOverrideRequest:
    ttl = Duration()
    ttl.FromTimedelta(override.ttl)
    return pb.SetComponentVersionOverrideRequest(
        target=pb.ComponentOverrideTarget(pool_name=override.target),
        component=component_to_pb(override.component),
        version=pb.ComponentVersion(version=override.version), ttl=ttl)


def override_from_pb(message: pb.SetComponentVersionOverrideRequest) -> Override:
    return Override(target=message.target.pool_name,
                    component=component_from_pb(message.component),
                    version=message.version.version,
                    ttl=message.ttl.ToTimedelta())


def applied_from_pb(target: str, component: HostComponent,
                    message: pb.GetAppliedHostComponentVersionsResponse) -> AppliedVersions:
    return AppliedVersions(target=target, component=component,
                           nodes={n.node: n.version.version for n in message.nodes})


def applied_to_pb(applied: AppliedVersions) -> pb.GetAppliedHostComponentVersionsResponse:
    return pb.GetAppliedHostComponentVersionsResponse(nodes=[
        pb.NodeComponentVersion(node=node, version=pb.ComponentVersion(version=version))
        for node, version in sorted(applied.nodes.items())])


# ------------------------------------------------------------------ the client


class MoClient:
    """Args:
        target: ``host:port`` of MO (setting ``mo_target``).
        deadline: seconds each attempt may take.
        attempts: tries per call for retryable errors.
        backoff: first retry delay in seconds; doubles per retry.
    """

    def __init__(self, target: str, *, deadline: float = 5.0, attempts: int = 5,
                 backoff: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> None:
        self.target = target
        self.deadline = deadline
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.MoHostVersionStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> MoClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, what: str, call: Callable[[], T]) -> T:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRYABLE or attempt == self.attempts:
                    raise MoError(f"MO {what} failed after {attempt} attempt(s): "
                                  f"{code.name}: {exc.details()}", code) from None
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def set_override(self, override: Override) -> OverrideAccepted:
        """Start a gradual rollout of ``override``.

        Raises:
            MoError: MO refused it, or stayed unavailable through every retry.
        """
        request = override_to_pb(override)
        reply = self._call("SetComponentVersionOverride", lambda: self._stub.
                           SetComponentVersionOverride(request, timeout=self.deadline))
        return OverrideAccepted(expires_at=reply.expires_at.ToDatetime(tzinfo=UTC))

    def applied_versions(self, target: str,
                         component: HostComponent = HostComponent.OS) -> AppliedVersions:
        """What every node of pool ``target`` reports now.

        Raises:
            MoError: as for :meth:`set_override`.
        """
        request = pb.GetAppliedHostComponentVersionsRequest(
            target=pb.ComponentOverrideTarget(pool_name=target),
            component=component_to_pb(component))
        reply = self._call("GetAppliedHostComponentVersions", lambda: self._stub.
                           GetAppliedHostComponentVersions(request, timeout=self.deadline))
        return applied_from_pb(target, component, reply)



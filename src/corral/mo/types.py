"""Domain types for talking to the Maintenance Orchestrator (no protobuf here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class HostComponent(enum.Enum):
    OS = "os"


@dataclass(frozen=True, kw_only=True)
class Override:
    """Roll ``version`` of ``component`` out to every node of pool ``target``."""

    target: str
    component: HostComponent
    version: str
    ttl: timedelta


@dataclass(frozen=True, kw_only=True)
class OverrideAccepted:
    expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class AppliedVersions:
    """The version each node of a pool reports for a component."""

    target: str
    component: HostComponent
    nodes: dict[str, str] = field(default_factory=dict)

    def converged(self, version: str) -> bool:
        return bool(self.nodes) and all(v == version for v in self.nodes.values())

    def lagging(self, version: str) -> list[str]:
        return sorted(n for n, v in self.nodes.items() if v != version)

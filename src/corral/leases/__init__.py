"""Leases: test runs ask for boards, wait their turn, hold them alone and give
them back (docs/leases.md)."""

from corral.leases.model import Caller, LeaseRequest
from corral.leases.service import LeaseEnded, LeaseService, install

__all__ = ["Caller", "LeaseEnded", "LeaseRequest", "LeaseService", "install"]

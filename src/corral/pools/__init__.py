"""Pools of nodes and their OS overrides through MO (docs/pools.md)."""

from corral.pools.service import KIND, Held, PoolService, reserve_pool_events

__all__ = ["KIND", "Held", "PoolService", "reserve_pool_events"]

"""One body, two calling conventions.

Code that talks to the store on both a synchronous and an asyncio path
(firing a batch of events) is written once, as a generator: each ``yield``
hands over what a store call returned and is sent back its value. On the
synchronous path that is the value itself; on the asyncio path it is an
awaitable, awaited here. The generator's return value is the result.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(steps: Generator[Any, Any, T]) -> T:
    """Run ``steps`` whose store calls returned their values."""
    try:
        value = next(steps)
        while True:
            value = steps.send(value)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_async(steps: Generator[Any, Any, T]) -> T:
    """Run ``steps`` whose store calls returned awaitables."""
    try:
        pending = next(steps)
        while True:
            pending = steps.send(await pending)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]

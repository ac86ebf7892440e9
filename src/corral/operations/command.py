"""Run lab operations as shell commands, the way most labs already script them.

Each operation kind maps to a command template, taken from the board's
inventory (``commands: {power_cycle: ...}``) or, failing that, from the
configuration (``command_power_cycle`` and friends). Templates are formatted
with the board's attributes (``{name}``, ``{mac}``, ``{hostname}``, ...), split
like a shell would, and run without a shell. Exit status 0 is success; any
other status is a definite failure; a command that cannot start or runs past
``timeout`` is a transient error and is retried.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from typing import Any

from corral.operations.base import OperationContext, OperationFailed


class _Attrs(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        raise OperationFailed(f"command template needs {{{key}}}, which the board lacks")


class CommandBackend:
    """Implements ``PowerDriver``, ``Poller`` and ``PxeWriter`` with commands."""

    def __init__(self, defaults: Mapping[str, str], *, timeout: float = 60.0) -> None:
        self.defaults = dict(defaults)
        self.timeout = timeout

    def _run(self, ctx: OperationContext) -> Mapping[str, Any]:
        commands = ctx.attrs.get("commands") or {}
        template = commands.get(ctx.kind) or self.defaults.get(ctx.kind)
        if not template:
            raise OperationFailed(
                f"no command for {ctx.kind!r}: set commands.{ctx.kind} in the board's inventory "
                f"or command_{ctx.kind} in the configuration"
            )
        values = _Attrs({k: v for k, v in ctx.attrs.items() if not isinstance(v, dict | list)})
        values.setdefault("name", ctx.name)
        values["operation_id"] = ctx.operation_id
        argv = [part.format_map(values) for part in shlex.split(template)]
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                   check=False)
        detail = {"exit_status": completed.returncode,
                  "output": (completed.stdout + completed.stderr)[-2000:]}
        if completed.returncode != 0:
            raise OperationFailed(f"{argv[0]} exited with status {completed.returncode}",
                                  **detail)
        return detail

    def cycle(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self._run(ctx)

    def ping(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self._run(ctx)

    def poll(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self._run(ctx)

    def write(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self._run(ctx)

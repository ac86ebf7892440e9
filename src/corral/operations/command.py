"""Run lab operations as shell commands, the way most labs already script them.

Each operation kind maps to a command template, taken from the board's
inventory (``commands: {power_cycle: ...}``) or, failing that, from the
configuration (``command_power_cycle`` and friends). Templates are split like
a shell would, formatted with the board's attributes (``{name}``, ``{mac}``,
``{hostname}``, ...) and run without a shell, so each value is one argument
whatever it holds. A template that runs a shell script itself (``sh -c
'...'``) gets its values shell-quoted inside that script, so a value is data
there too. Exit status 0 is success; any other status is a definite failure; a
command that cannot start or runs past ``timeout`` is a transient error and is
retried.

The output (stdout then stderr, its last 2000 characters) becomes the
result's ``output``: read as UTF-8 with undecodable bytes replaced and NUL
dropped, because a lab script's output is whatever its tools print, and the
result must be stored like any other event payload.
"""

from __future__ import annotations

import shlex
import string
import subprocess
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from corral.operations.base import OperationContext, OperationFailed

SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh"})
MAX_OUTPUT = 2000


class _Attrs(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        raise OperationFailed(f"command template needs {{{key}}}, which the board lacks")


class _ShellQuoting(string.Formatter):
    """Formats like ``str.format_map``, each substituted value shell-quoted."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return shlex.quote(super().format_field(value, format_spec))


def template_fields(template: str) -> list[str]:
    """The names a template fills in (``{hostname}`` is ``hostname``).

    Raises:
        ValueError: the template is not a format string, or a field is not a
            plain name: ``{}``, ``{0}``, ``{name.__class__}`` and
            ``{power[0]}`` reach past the board's values, so none is allowed.
    """
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a template ({exc}; write {{{{ and }}}} for a brace)") from None
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        # A format spec may hold fields of its own: {hostname:{width}}.
        names.extend(template_fields(spec or ""))
        if not field.isidentifier():
            raise ValueError(f"template field {{{field}}} is not a board attribute's name "
                             "(write {hostname}, {power_relay}, ...: no '.', '[' or number)")
        names.append(field)
    return names


def _script_index(parts: list[str]) -> int | None:
    """Where the script is in ``sh -c SCRIPT ...`` (also ``bash -ec``, ``sh -o
    pipefail -c``, ``bash --norc -c``); None when the command is not a shell
    given a script."""
    if not parts or PurePath(parts[0]).name not in SHELLS:
        return None
    index = 1
    while index < len(parts) - 1 and parts[index][:1] in ("-", "+"):
        flag = parts[index]
        if flag[1:] in ("o", "O"):
            index += 2  # -o NAME
            continue
        if not flag.startswith("--") and "c" in flag[1:]:
            return index + 1
        index += 1
    return None


def _text(output: bytes) -> str:
    return output.decode("utf-8", "replace").replace("\x00", "")


class CommandBackend:
    """Implements ``Poller`` and ``PxeWriter`` (and, wrapped by
    ``corral.power.drivers.CommandPower``, power) with commands."""

    def __init__(self, defaults: Mapping[str, str], *, timeout: float = 60.0) -> None:
        self.defaults = dict(defaults)
        self.timeout = timeout

    def has_command(self, ctx: OperationContext) -> bool:
        """Whether the board or the configuration gives a command for ctx.kind."""
        return bool((ctx.attrs.get("commands") or {}).get(ctx.kind)
                    or self.defaults.get(ctx.kind))

    def run(self, ctx: OperationContext) -> Mapping[str, Any]:
        """Run the command for ``ctx.kind``.

        Raises:
            OperationFailed: there is none, or it exited with a status other than 0.
        """
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
        try:
            template_fields(template)
        except ValueError as exc:
            raise OperationFailed(f"command for {ctx.kind!r}: {exc}") from None
        parts = shlex.split(template)
        script = _script_index(parts)
        argv = [_ShellQuoting().vformat(part, (), values) if index == script
                else part.format_map(values) for index, part in enumerate(parts)]
        completed = subprocess.run(argv, capture_output=True, timeout=self.timeout, check=False)
        detail = {"exit_status": completed.returncode,
                  "output": (_text(completed.stdout) + _text(completed.stderr))[-MAX_OUTPUT:]}
        if completed.returncode != 0:
            raise OperationFailed(f"{argv[0]} exited with status {completed.returncode}",
                                  **detail)
        return detail

    def cycle(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self.run(ctx)

    def ping(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self.run(ctx)

    def poll(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self.run(ctx)

    def write(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self.run(ctx)

    def boot_local(self, ctx: OperationContext) -> Mapping[str, Any]:
        """Only where the lab gives a command: a lab that writes its PXE
        configurations by command may not need one."""
        if not self.has_command(ctx):
            return {"skipped": "no boot_local command (command_boot_local)"}
        return self.run(ctx)

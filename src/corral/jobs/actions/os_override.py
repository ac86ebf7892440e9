"""``osOverrideAction: {osVersion}``: roll an OS version out to the job's pool
through MO (docs/pools.md). The action is done when the pool reports every node on
the version (the pool machine reaches ``overridden``), and fails when the pool
ends in ``failed_override``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.jobs.actions.base import ActionType, Field, RunContext
from corral.jobs.checks import Checker
from corral.names import OS_VERSION

VERSION_RE = OS_VERSION.regex


class OsOverrideAction(ActionType):
    key = "osOverrideAction"
    summary = "Roll an OS version out to the job's pool through MO and wait until every " \
              "node reports it."
    fields = (Field(name="osVersion", type="string", required=True,
                    description="The OS snapshot version MO rolls out, e.g. "
                                "`azurelinux3-test-x86_64-r11`."),)

    def parse(self, body: Any, path: str, check: Checker) -> dict[str, Any] | None:
        body = check.mapping(body, path, ("osVersion",), ("osVersion",))
        if body is None or "osVersion" not in body:
            return None
        version = check.string(body["osVersion"], f"{path}.osVersion", pattern=VERSION_RE,
                               what="letters, digits, '.', '_', '+' or '-' (no spaces)")
        return None if version is None else {"os_version": version}

    def dump(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"osVersion": params["os_version"]}

    def check_dispatch(self, params: Mapping[str, Any], ctx: RunContext) -> str | None:
        return ctx.mo_reachable()

    def start(self, params: Mapping[str, Any], ctx: RunContext) -> None:
        ctx.override(params["os_version"])


ACTION = OsOverrideAction()

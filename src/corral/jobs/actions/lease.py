"""``leaseAction: {selector, count, duration, ...}`` (corral/v2): lease boards
for the job (docs/leases.md) and hold them until the job ends.

Starting the action requests a lease through the lease service, owned by the
job's submitter and marked with the job (its machine's ``job`` attribute), so
that it counts against the submitter's quota and fair share. The job waits
in ``waiting`` until the lease is active (:mod:`corral.jobs.leasing` watches,
level-triggered, and fires ``action_done``); the actions after it run with
the boards held. Whatever way the job ends, ``finish_job`` releases every
lease of the job; a lease that ends on its own while the job holds it (its
duration ran out, an admin revoked it) ends the job ``incomplete``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.jobs.actions.base import ActionType, Field, RunContext
from corral.jobs.checks import duration_doc


class LeaseAction(ActionType):
    key = "leaseAction"
    since = 2
    summary = ("Lease boards matching a selector and hold them until the job ends; done "
               "when the lease is active.")
    fields = (
        Field(name="selector", type="string", required=True,
              description="Which boards, in the lease selector syntax (docs/leases.md), "
                          "e.g. `arch=arm64,rack in (r1,r2),!broken`."),
        Field(name="count", type="integer", required=False,
              description="How many boards, all or none (1-100, default 1)."),
        Field(name="duration", type="duration", required=True,
              description="How long the lease holds the boards once active; the job ends "
                          "`incomplete` if the lease runs out before the job ends."),
        Field(name="release", type="string", required=False,
              description="The release the boards must run (they are reimaged to it "
                          "unless they already do)."),
        Field(name="heartbeat", type="duration", required=False,
              description="The lease ends if Corral stops running the job for this long "
                          "(5 s to 1 day); the job sends the heartbeats."),
        Field(name="priority", type="integer", required=False,
              description="The lease's place in the queue, -100 to 100 (default 0)."),
        Field(name="on_return", type="string", required=False,
              description="How the boards go home after the job: `reimage` to the lab's "
                          "baseline (the default) or `power_cycle`."),
    )

    def dump(self, params: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"selector": params["selector"], "count": params["count"],
                                "duration": duration_doc(params["duration_seconds"])}
        if params.get("release") is not None:
            body["release"] = params["release"]
        if params.get("heartbeat_seconds") is not None:
            body["heartbeat"] = duration_doc(params["heartbeat_seconds"])
        if params.get("priority", 0):
            body["priority"] = params["priority"]
        if params.get("on_return", "reimage") != "reimage":
            body["on_return"] = params["on_return"]
        return body

    def check_dispatch(self, params: Mapping[str, Any], ctx: RunContext) -> str | None:
        return ctx.lease_problem(params)

    def dispatch_key(self, params: Mapping[str, Any]) -> str:
        return f"{self.key} {sorted(params.items())}"

    def start(self, params: Mapping[str, Any], ctx: RunContext) -> Mapping[str, Any] | None:
        return {"lease": ctx.request_lease(params)}

    def stop(self, params: Mapping[str, Any], ctx: RunContext,
             started: Mapping[str, Any]) -> None:
        lease = started.get("lease")
        if isinstance(lease, str) and lease:
            ctx.release_lease(lease)


ACTION = LeaseAction()

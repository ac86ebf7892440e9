"""Maize snapshot documents (docs/jobs.md): ``{"snapshot": {"release": "..."}}``
becomes a v1 job with one stage applying ``osOverrideAction`` with
``osVersion`` = the release."""

from __future__ import annotations

from typing import Any

from corral.jobs import v1
from corral.jobs.checks import Checker, duration_doc
from corral.jobs.spec import SpecError


def job_from_maize(doc: Any, *, job_timeout: int = 6 * 3600, action_timeout: int = 3 * 3600,
                   fabric: str | None = None) -> dict[str, Any]:
    """The v1 job document for a Maize snapshot.

    Raises:
        SpecError: the document is not a Maize snapshot (each problem with its path).
    """
    check = Checker()
    top = check.mapping(doc, "", ("snapshot",), ("snapshot",))
    release = None
    if top is not None and "snapshot" in top:
        snapshot = check.mapping(top["snapshot"], "snapshot", ("release",), ("release",))
        if snapshot is not None and "release" in snapshot:
            release = check.string(snapshot["release"], "snapshot.release")
    if check.problems or release is None:
        raise SpecError(check.problems)
    job: dict[str, Any] = {
        "apiVersion": v1.API_VERSION, "kind": "Job", "job_name": f"maize {release}"[:200],
        "priority": "medium",
        "timeouts": {"job": duration_doc(job_timeout), "action": duration_doc(action_timeout)},
        "context": {"source": "maize", "snapshot": {"release": release}},
        "stages": [{"name": "os-override", "actions": [
            {"name": "apply-maize-os", "osOverrideAction": {"osVersion": release}}]}],
    }
    if fabric is not None:
        job["fabric"] = fabric
    return job

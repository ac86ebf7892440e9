"""The rules that turn a health check's result into a verdict (pure; the
health pass reads what they need and writes what they decide).

In order, the first that applies decides (docs/health.md, "The rules"):

1. a passed check passes (and proves the shared equipment it went through);
2. a failure at a step through shared equipment (the power controller, the
   netboot server) that is degraded is the equipment's: the board is
   ``unknown``; when enough boards behind one piece of equipment failed
   there within the window, it becomes degraded now, with the same verdict;
3. a hard fault (a step marked ``hard``) fails the board at once;
4. an image that failed on enough other boards within the window is to blame:
   the board is suspect and checked again with the next known-good image;
5. ``k`` board-blamed failures among its last ``n`` checks fail the board;
6. otherwise the board is suspect and checked again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Result:
    """One check's result, as its operation reported it."""

    board: str
    check: str
    passed: bool
    step: str | None = None
    reason: str = ""
    hard: bool = False
    equipment: str | None = None
    image: str | None = None
    # Whether the failed step came after a netboot of the check's image.
    after_netboot: bool = False


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """What the rules weigh beside the result."""

    k: int
    n: int
    # The board's previous results, newest first: (outcome, blame).
    previous: Sequence[tuple[str, str]]
    degraded: frozenset[str]
    # Distinct boards (this one included) that failed through the result's
    # equipment within the window, and other boards that failed with its image.
    equipment_failures: int = 0
    image_failures: int = 0
    window: int = 600
    equipment_threshold: int = 3
    image_threshold: int = 2


@dataclass(frozen=True, kw_only=True)
class Verdict:
    decision: str  # passed | suspect | failed | unknown
    blame: str  # none | board | image | controller | netboot
    rule: str
    degrade: str | None = None  # equipment found degraded by this result
    recovered: tuple[str, ...] = ()


def _kind(equipment: str) -> str:
    return "controller" if equipment.startswith("controller:") else "netboot"


def judge(result: Result, evidence: Evidence, through: Sequence[str] = ()) -> Verdict:
    """The verdict on ``result`` (``through``: the equipment a passed check
    went through, proven working)."""
    if result.passed:
        recovered = tuple(e for e in through if e in evidence.degraded)
        rule = f"check {result.check} passed"
        if recovered:
            rule += f"; {', '.join(recovered)} works again"
        return Verdict(decision="passed", blame="none", rule=rule, recovered=recovered)
    where = f"at {result.step}" if result.step else "(it never reported)"
    equipment = result.equipment
    if equipment is not None and equipment in evidence.degraded:
        return Verdict(decision="unknown", blame=_kind(equipment), rule=(
            f"failed {where}, through {equipment}, which is degraded: blamed on it, "
            f"not the board; checked again once it is back"))
    if equipment is not None and evidence.equipment_failures >= evidence.equipment_threshold:
        return Verdict(decision="unknown", blame=_kind(equipment), degrade=equipment, rule=(
            f"failed {where}; {evidence.equipment_failures} boards behind {equipment} "
            f"failed there within {evidence.window} s: {equipment} is degraded, and its "
            f"boards wait as unknown"))
    if result.hard:
        return Verdict(decision="failed", blame="board",
                       rule=f"hard fault {where}: failed at once")
    if result.image and result.after_netboot and \
            evidence.image_failures >= evidence.image_threshold:
        return Verdict(decision="suspect", blame="image", rule=(
            f"failed {where} on image {result.image}, which failed on "
            f"{evidence.image_failures} other boards within {evidence.window} s: blamed on "
            f"the image; checked again with the next known-good image"))
    recent = [o for o, b in evidence.previous[:evidence.n - 1] if o == "failed" and b == "board"]
    failures = len(recent) + 1
    if failures >= evidence.k:
        return Verdict(decision="failed", blame="board", rule=(
            f"failed {where}: {failures} of its last {evidence.n} checks failed (the rule "
            f"is {evidence.k} of {evidence.n}): waits for an operator"))
    return Verdict(decision="suspect", blame="board", rule=(
        f"failed {where}: {failures} of its last {evidence.n} checks failed (the rule is "
        f"{evidence.k} of {evidence.n}): suspect, checked again"))


def result_of(board: str, payload: Mapping[str, Any] | None, event: str, reason: str | None,
              steps: Sequence[str]) -> Result:
    """The result a check's history row says (``steps``: its definition's
    step kinds, to tell a failure after its netboot)."""
    doc = dict(payload or {})
    check = str(doc.get("check") or "")
    if event == "health_check_ok":
        return Result(board=board, check=check, passed=True, image=doc.get("image"))
    index = doc.get("index")
    after = isinstance(index, int) and "netboot" in steps[:index]
    return Result(board=board, check=check, passed=False, step=doc.get("step"),
                  reason=reason or ("the check did not report in time" if event == "timeout"
                                    else ""),
                  hard=bool(doc.get("hard")), equipment=doc.get("equipment"),
                  image=doc.get("image"), after_netboot=after)

"""Collecting every problem of a job spec at once, each with its path.

The wording of these problems is part of each spec version (the negative
fixtures of tests/golden/jobspec/ and docs/jobs.md hold it); a wrong value is
shown as every Corral file shows one (:func:`corral.validation.describe`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from corral.jobs.spec import UNITS
from corral.validation import describe

__all__ = ["Checker", "describe", "duration_doc"]

NAME_LIMIT = 200


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> Mapping[str, Any] | None:
        """A mapping with only ``allowed`` keys and every ``required`` one."""
        if not isinstance(value, Mapping):
            self.error(path, f"must be a mapping with keys {', '.join(allowed)}, not "
                       f"{describe(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.error(f"{path}.{key}" if path else str(key),
                           f"unknown key; allowed keys: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                self.error(path or "(top level)", f"missing required key {key!r}")
        return value

    def string(self, value: Any, path: str, *, limit: int = NAME_LIMIT,
               pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        if not isinstance(value, str):
            self.error(path, f"must be a string, not {describe(value)}")
            return None
        if not 1 <= len(value) <= limit:
            self.error(path, f"must be 1-{limit} characters long, not {len(value)}")
            return None
        if pattern is not None and not pattern.match(value):
            self.error(path, f"must be {what}, not {value!r}")
            return None
        return value

    def integer(self, value: Any, path: str, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be a whole number from {low} to {high}, not "
                       f"{describe(value)}")
            return None
        if not low <= value <= high:
            self.error(path, f"must be from {low} to {high}, not {value}")
            return None
        return value

    def duration(self, value: Any, path: str) -> int | None:
        """``{minutes: 5}``: exactly one of days/hours/minutes/seconds, a whole
        number >= 1. Returns seconds."""
        units = tuple(u for u, _ in UNITS)
        if not isinstance(value, Mapping):
            self.error(path, f"must be a mapping with exactly one of {', '.join(units)}, "
                       f"not {describe(value)}")
            return None
        unknown = [k for k in value if k not in units]
        for key in unknown:
            self.error(f"{path}.{key}", f"unknown unit; allowed: {', '.join(units)}")
        given = [k for k in units if k in value]
        if len(given) != 1:
            if not unknown:
                self.error(path, f"must have exactly one of {', '.join(units)}, not "
                           f"{len(given)}")
            return None
        [unit] = given
        amount = value[unit]
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            self.error(f"{path}.{unit}", f"must be a whole number >= 1, not "
                       f"{describe(amount)}")
            return None
        return amount * dict(UNITS)[unit]


def duration_doc(seconds: int) -> dict[str, int]:
    """Seconds as the largest unit that divides them exactly."""
    for unit, size in UNITS:
        if seconds % size == 0:
            return {unit: seconds // size}
    raise AssertionError("unreachable")  # pragma: no cover

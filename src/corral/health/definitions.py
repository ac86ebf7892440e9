"""Health check definitions: what proves a board of a type healthy
(``statemachines/health/*.yaml``, docs/health.md).

A definition applies to the boards its selector matches (the lease
selector's syntax, on labels and facts); where several match, the highest
``priority`` wins, then the name. Its steps run in order, each with its own
timeout, and are built from what Corral already drives: a power cycle, a
netboot of a known-good image, the board's own callback, a pattern on its
serial console, a ping, a poll. Its rules say when a failed check fails the
board (``k`` of the last ``n``) and how many boards of the type may be in
checks at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from corral.errors import CorralError
from corral.leases import selector as selectors
from corral.validation import Omittable, Problem, Strict, refuse, validate
from corral.yamlio import YamlSyntaxError, load_yaml

Seconds = Annotated[int, Field(ge=1, le=86400)]
NAME = r"^[a-z][a-z0-9_-]{0,62}$"


class HealthError(CorralError):
    """Health definitions that do not validate (every problem, with file and line)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Step(Strict):
    timeout: Seconds = 300
    # A failure at this step fails the board at once (no re-check), unless
    # shared equipment is to blame.
    hard: bool = False


class PowerCycleStep(_Step):
    step: Literal["power_cycle"]
    timeout: Seconds = 120


class NetbootStep(_Step):
    """Netboot a known-good image: the definition's ``images`` in turn (a
    re-check takes the next one), else ``release``."""

    step: Literal["netboot"]
    release: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class CallbackStep(_Step):
    """Wait for the board to report ``event`` over the callback endpoint."""

    step: Literal["callback"]
    event: Literal["second_stage_started", "install_ok"] = "second_stage_started"


class ConsoleStep(_Step):
    """Wait for ``pattern`` (a regular expression) on the serial console of
    this boot attempt."""

    step: Literal["console"]
    pattern: Annotated[str, Field(min_length=1, max_length=500)]

    @model_validator(mode="after")
    def _compiles(self) -> ConsoleStep:
        import re

        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise refuse("pattern is not a regular expression: {why}", why=str(exc)) from None
        return self


class PingStep(_Step):
    step: Literal["ping"]
    timeout: Seconds = 120


class PollStep(_Step):
    step: Literal["poll"]
    timeout: Seconds = 60


Step = Annotated[PowerCycleStep | NetbootStep | CallbackStep | ConsoleStep | PingStep
                 | PollStep, Field(discriminator="step")]
STEP_KINDS = ("power_cycle", "netboot", "callback", "console", "ping", "poll")
# Steps whose failure looks like shared equipment's (blamed on it when
# several boards behind it fail together): the power controller's, the
# netboot server's.
EQUIPMENT_STEPS = {"power_cycle": "controller", "netboot": "netboot"}


class Rules(Omittable):
    # A board fails after k failed checks among its last n (board-blamed).
    k: Annotated[int, Field(ge=1, le=20)] = 2
    n: Annotated[int, Field(ge=1, le=20)] = 3
    # At most this share of the type's boards is in checks at once (at least one).
    max_checking: Annotated[float, Field(gt=0, le=1)] = 0.25
    # Checks of a proven ready board every so many hours (0: never). Every
    # lease return checks a board anyway (the return path ends in a check).
    every_hours: Annotated[float, Field(ge=0, le=24 * 365)] = 0

    @model_validator(mode="after")
    def _k_within_n(self) -> Rules:
        if self.k > self.n:
            raise refuse("k ({k}) must be at most n ({n})", k=self.k, n=self.n)
        return self


class Definition(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    description: Annotated[str, Field(max_length=500)] = ""
    selector: Annotated[str, Field(max_length=1000)] = ""
    priority: Annotated[int, Field(ge=-100, le=100)] = 0
    # Known-good releases (boot resources) for netboot steps, tried in turn.
    images: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                      Field(max_length=10)] = Field(default_factory=list)
    steps: Annotated[list[Step], Field(min_length=1, max_length=20)]
    rules: Rules = Rules()

    @model_validator(mode="after")
    def _parses(self) -> Definition:
        if self.selector:
            try:
                selectors.parse(self.selector)
            except CorralError as exc:
                raise refuse("{why}", why=str(exc)) from None
        for step in self.steps:
            if isinstance(step, NetbootStep) and step.release is None and not self.images:
                raise refuse("a netboot step needs a release, or the definition's images")
        return self

    def matches(self, facts: Mapping[str, str]) -> bool:
        return not self.selector or selectors.parse(self.selector).matches(facts)

    def image(self, attempt: int) -> str | None:
        """The known-good image of a check's ``attempt`` (0 first): a re-check
        takes the next one."""
        return self.images[attempt % len(self.images)] if self.images else None


# What proves a board when no definition matches it: what the board machine
# did before health checks, a power cycle and a ping.
DEFAULT = Definition(name="default", description="A power cycle and a ping.", priority=-100,
                     steps=[PowerCycleStep(step="power_cycle"), PingStep(step="ping")])


@dataclass(frozen=True)
class Definitions:
    """Every definition, best first."""

    checks: tuple[Definition, ...]

    def of(self, name: str, attrs: Mapping[str, Any]) -> Definition:
        facts = selectors.facts_of(name, attrs)
        return next((d for d in self.checks if d.matches(facts)), DEFAULT)

    def named(self, name: str) -> Definition:
        return next((d for d in self.checks if d.name == name), DEFAULT)

    @classmethod
    def of_list(cls, checks: Iterable[Definition]) -> Definitions:
        return cls(tuple(sorted(checks, key=lambda d: (-d.priority, d.name))))


def load(directory: Path) -> Definitions:
    """Every ``*.yaml`` of ``directory`` (one definition each); none when
    the directory is absent.

    Raises:
        HealthError: every problem, with file and line.
    """
    if not directory.is_dir():
        return Definitions(())
    problems: list[Problem] = []
    found: list[Definition] = []
    for path in sorted(directory.glob("*.yaml")):
        where = str(path)
        try:
            doc = load_yaml(path.read_text(encoding="utf-8"))
        except OSError as exc:
            problems.append(Problem(path=where, line=0, message=exc.strerror or "unreadable"))
            continue
        except YamlSyntaxError as exc:
            problems.append(Problem(path=where, line=exc.line, message=str(exc)))
            continue
        definition, wrong = validate(Definition, doc, where)
        problems += wrong
        if definition is not None:
            if any(d.name == definition.name for d in found):
                problems.append(Problem(path=where, line=1, message=(
                    f"health check {definition.name!r} is defined twice")))
            found.append(definition)
    if problems:
        raise HealthError(problems)
    return Definitions.of_list(found)

"""Health check definitions (validated with file and line) and the rules
that judge a check's result: k of n, hard faults, equipment and image blame."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.health.definitions import DEFAULT, HealthError, load
from corral.health.judge import Evidence, Result, judge, result_of

GOOD = """\
name: arm64
selector: "arch=arm64"
images: [good-1, good-2]
steps:
  - {step: power_cycle}
  - {step: netboot, timeout: 300}
  - {step: console, pattern: "login:"}
rules: {k: 2, n: 3, max_checking: 0.5}
"""

BAD = """\
name: arm64
steps:
  - {step: power_cycle}
  - {step: console, pattern: "("}
  - {step: teleport}
rules: {k: 4, n: 3}
"""


def test_a_definition_loads_and_chooses_its_boards(tmp_path: Path) -> None:
    (tmp_path / "arm64.yaml").write_text(GOOD)
    definitions = load(tmp_path)
    [arm] = definitions.checks
    assert [s.step for s in arm.steps] == ["power_cycle", "netboot", "console"]
    assert definitions.of("b1", {"arch": "arm64"}) is arm
    assert definitions.of("b2", {"arch": "amd64"}) is DEFAULT
    assert [arm.image(i) for i in range(3)] == ["good-1", "good-2", "good-1"]


def test_bad_definitions_say_where(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    with pytest.raises(HealthError) as caught:
        load(tmp_path)
    text = str(caught.value)
    assert "bad.yaml:4: steps[1].console: pattern is not a regular expression" in text
    assert "bad.yaml:5: steps[2]" in text
    assert "teleport" in text
    assert "bad.yaml:6: rules: k (4) must be at most n (3)" in text


def _evidence(previous=(), **extra) -> Evidence:  # type: ignore[no-untyped-def]
    return Evidence(k=2, n=3, previous=list(previous), degraded=frozenset(), **extra)


FAILED = Result(board="b1", check="arm64", passed=False, step="ping")


def test_one_failure_makes_a_board_suspect_and_k_of_n_fails_it() -> None:
    assert judge(FAILED, _evidence()).decision == "suspect"
    assert judge(FAILED, _evidence([("passed", "none"), ("passed", "none")])).decision \
        == "suspect"
    second = judge(FAILED, _evidence([("passed", "none"), ("failed", "board")]))
    assert (second.decision, second.blame) == ("failed", "board")
    assert "2 of its last 3" in second.rule
    # A failure older than the last n does not count, nor one blamed elsewhere.
    assert judge(FAILED, _evidence([("passed", "none"), ("passed", "none"),
                                    ("failed", "board")])).decision == "suspect"
    assert judge(FAILED, _evidence([("failed", "controller")])).decision == "suspect"


def test_a_hard_fault_fails_at_once() -> None:
    hard = Result(board="b1", check="arm64", passed=False, step="poll", hard=True)
    assert judge(hard, _evidence()).decision == "failed"


def test_failures_behind_one_controller_are_the_controllers() -> None:
    power = Result(board="b1", check="arm64", passed=False, step="power_cycle",
                   equipment="controller:relay:1")
    assert judge(power, _evidence(equipment_failures=2)).decision == "suspect"
    third = judge(power, _evidence(equipment_failures=3))
    assert (third.decision, third.blame, third.degrade) == ("unknown", "controller",
                                                            "controller:relay:1")
    degraded = Evidence(k=2, n=3, previous=[("failed", "board")],
                        degraded=frozenset({"controller:relay:1"}))
    assert judge(power, degraded).decision == "unknown"      # not failed: k of n waits
    passed = Result(board="b2", check="arm64", passed=True)
    assert judge(passed, degraded, ["controller:relay:1"]).recovered == ("controller:relay:1",)


def test_an_image_failing_on_other_boards_is_the_images() -> None:
    booted = Result(board="b1", check="arm64", passed=False, step="console",
                    image="good-1", after_netboot=True)
    verdict = judge(booted, _evidence([("failed", "board")], image_failures=2))
    assert (verdict.decision, verdict.blame) == ("suspect", "image")
    assert judge(booted, _evidence([("failed", "board")], image_failures=1)).decision \
        == "failed"


def test_a_result_is_read_from_its_history_row() -> None:
    steps = ["power_cycle", "netboot", "console"]
    failed = result_of("b1", {"check": "arm64", "step": "console", "index": 2,
                              "image": "good-1", "equipment": None}, "health_check_failed",
                       "no login prompt", steps)
    assert failed.after_netboot
    assert not failed.passed
    assert failed.reason == "no login prompt"
    silent = result_of("b1", None, "timeout", None, steps)
    assert not silent.passed
    assert "did not report" in silent.reason

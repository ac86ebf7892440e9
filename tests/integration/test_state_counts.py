"""Machines per state for /metrics: an aggregate the workers recount, read as
a few rows, and counted live only when no recent recount exists."""

from __future__ import annotations

import threading

from corral.api.metrics import StateCollector


def gauges(engine, max_age: float = 30.0) -> dict[str, dict[tuple[str, ...], float]]:
    found: dict[str, dict[tuple[str, ...], float]] = {}
    for family in StateCollector(engine, counts_max_age=max_age).collect():
        found[family.name] = {tuple(s.labels.values()): s.value for s in family.samples}
    return found


def test_without_a_recount_the_gauges_count_live(engine):
    engine.import_machines("board", {f"b{i}": {} for i in range(3)})
    counts, age = engine.sweeper.state_counts(max_age=30)
    assert (counts, age) == ([("board", "new", 3)], None)
    seen = gauges(engine)
    assert seen["corral_machines"] == {("board", "new"): 3}
    assert seen["corral_machine_counts_age_seconds"] == {(): 0.0}


def test_the_gauges_read_the_recount_until_it_is_too_old(engine, clock):
    engine.import_machines("board", {f"b{i}": {} for i in range(3)})
    engine.force_state("board", "b0", "failed_pinging", actor="t", reason="t")
    assert engine.sweeper.refresh_state_counts() == 2
    engine.force_state("board", "b1", "failed_pinging", actor="t", reason="t")
    clock.advance(20)
    # The aggregate, not a count: b1's move shows at the next recount.
    seen = gauges(engine, max_age=30)
    assert seen["corral_machines"] == {("board", "new"): 2, ("board", "failed_pinging"): 1}
    assert seen["corral_failed_machines"][("board",)] == 1
    assert seen["corral_machine_counts_age_seconds"] == {(): 20.0}
    engine.sweeper.refresh_state_counts()
    assert gauges(engine)["corral_failed_machines"][("board",)] == 2
    # A recount older than the limit (the workers stopped) is not trusted.
    engine.force_state("board", "b2", "failed_pinging", actor="t", reason="t")
    clock.advance(31)
    seen = gauges(engine, max_age=30)
    assert seen["corral_failed_machines"][("board",)] == 3
    assert seen["corral_machine_counts_age_seconds"] == {(): 0.0}


def test_recounts_from_many_processes_at_once_take_turns(engine):
    engine.import_machines("board", {f"b{i}": {} for i in range(20)})
    errors: list[BaseException] = []

    def recount() -> None:
        try:
            for _ in range(5):
                engine.sweeper.refresh_state_counts()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=recount) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert engine.sweeper.state_counts(max_age=30) == ([("board", "new", 20)], 0.0)

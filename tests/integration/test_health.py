"""Health checks on SQLite, PostgreSQL and MariaDB, on the simulated lab:
enrolment through the check path, the cap on boards in checks, the k-of-n
rule, a controller's outage blamed on it (unknown, probed with a doubling
backoff, back by itself), on-demand and burn-in checks, periodic checks and
the lease return path."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.app import build_handlers, build_worker
from corral.config import Settings
from corral.health.definitions import Definition as Check
from corral.health.definitions import Definitions, NetbootStep, PingStep, PowerCycleStep, Rules
from corral.health.service import HealthPass, install
from corral.health.steps import HealthSteps

START = datetime(2026, 1, 1, tzinfo=UTC)  # the test clock's start (tests/conftest.py)
# Two relays; relay-9's boards are the ones its outage takes down.
BOARDS = {f"b{i}": {"arch": "arm64", "power": {"relay": "relay-1" if i <= 4 else "relay-9",
                                                "port": i}}
          for i in range(1, 9)}


class Lab:
    def __init__(self, engine: Any, clock: Any, settings: Settings,
                 definitions: Definitions) -> None:
        self.engine, self.clock, self.settings = engine, clock, settings
        install(engine)
        self.health = HealthPass(engine, settings, definitions)
        handlers = build_handlers(settings, simulate=True, engine=engine)
        # The checks' own definitions, as statemachines/health/ would give them.
        self.steps = HealthSteps(store=engine.store, definitions=definitions,
                                 handlers=dict(handlers), timeout_scale=settings.timeout_scale,
                                 pause=0.01)
        handlers["health_check"] = self.steps
        self.worker = build_worker(engine, settings, handlers)
        self.peak = 0

    def state(self, board: str) -> str:
        return self.engine.get("board", board).state

    def states(self) -> dict[str, str]:
        return {b.name: b.state for b in self.engine.list_machines("board")}

    def step(self, seconds: float = 5.0) -> None:
        """One round: the pass, the checks it admitted, time, timeouts."""
        self.health.run_pass()
        checking = sum(1 for s in self.states().values() if s in ("checking", "judging"))
        self.peak = max(self.peak, checking)
        self.worker.run_pending()
        self.health.run_pass()
        self.clock.advance(seconds)
        self.engine.sweeper.sweep_timeouts()
        self.worker.run_pending()

    def until(self, done: Any, rounds: int = 80, seconds: float = 5.0) -> None:
        for _ in range(rounds):
            if done():
                return
            self.step(seconds)
        assert done(), self.states()

    def events(self, board: str) -> list[tuple[str, str]]:
        entries = self.engine.history("board", board, limit=500)
        return [(e.event, e.to_state) for e in reversed(entries)]

    def results(self, board: str) -> list[dict[str, Any]]:
        with self.engine.store.unit() as tx:
            return list(reversed(tx.health.results(board, limit=50)))


def settings(**extra: Any) -> Settings:
    quiet: dict[str, Any] = {"sim_operation_seconds": 0, "sim_power_cycle_failure": 0,
                             "sim_ping_failure": 0, "sim_poll_failure": 0,
                             "timeout_scale": 0.001}
    return Settings(**{**quiet, **extra})


def enrol(lab: Lab, boards: dict[str, Any] = BOARDS) -> None:
    lab.engine.import_machines("board", boards, actor="test", reason="lab")
    lab.clock.advance(11)
    lab.engine.sweeper.sweep_timeouts()


@pytest.fixture
def make_lab(engine: Any, clock: Any) -> Iterator[Any]:
    labs: list[Lab] = []

    def make(definitions: Definitions | None = None, **extra: Any) -> Lab:
        labs.append(Lab(engine, clock, settings(**extra), definitions or Definitions(())))
        return labs[-1]

    yield make
    for lab in labs:
        lab.worker.shutdown()


def test_enrolled_boards_are_checked_a_share_at_a_time_before_they_are_ready(make_lab):
    lab = make_lab()
    enrol(lab)
    assert set(lab.states().values()) == {"check_queued"}
    lab.health.run_pass()
    # The default check admits a quarter of the type (8 boards: 2) at once.
    assert sorted(lab.states().values()).count("checking") == 2
    lab.until(lambda: set(lab.states().values()) == {"ready"})
    assert lab.peak == 2
    assert lab.events("b1")[:5] == [("create", "new"), ("timeout", "check_queued"),
                                    ("admit", "checking"), ("health_check_ok", "judging"),
                                    ("check_passed", "ready")]
    [result] = lab.results("b1")
    assert (result["outcome"], result["decision"], result["blame"]) == ("passed", "passed",
                                                                        "none")
    explained = lab.engine.explain("board", "b1")
    assert "check default passed" in str(explained)


def test_one_failure_makes_a_board_suspect_and_k_of_n_fail_it(make_lab):
    lab = make_lab(sim_dead_boards="b2")
    enrol(lab)
    lab.until(lambda: lab.state("b2") == "suspect")
    [first] = lab.results("b2")
    assert (first["decision"], first["blame"], first["step"]) == ("suspect", "board",
                                                                  "power_cycle")
    assert "1 of its last 3 checks failed" in first["rule"]
    # A minute later it is checked again; the second failure of three fails it.
    lab.until(lambda: lab.state("b2") == "failed_health")
    decisions = [r["decision"] for r in lab.results("b2")]
    assert decisions == ["suspect", "failed"]
    assert "2 of its last 3 checks failed (the rule is 2 of 3)" in lab.results("b2")[-1]["rule"]
    assert "waits for an operator" in str(lab.engine.explain("board", "b2"))
    # Failed boards wait for an operator: nothing checks it again by itself.
    for _ in range(5):
        lab.step(60)
    assert lab.state("b2") == "failed_health"
    assert all(lab.state(b) == "ready" for b in BOARDS if b != "b2")
    # An operator's check starts the count over: one more failure makes it
    # suspect again, not failed at once.
    lab.health.request("b2", actor="op", reason="relay replaced (not really)")
    lab.until(lambda: lab.state("b2") in ("suspect", "failed_health"))
    assert lab.state("b2") == "suspect"
    assert "1 of its last 3 checks failed" in lab.results("b2")[-1]["rule"]


def test_an_operator_check_fired_as_a_plain_event_starts_the_count_over_too(make_lab):
    """The console's and `corral board event NAME check`'s way (the generic
    event route) repairs like `corral board check`: earlier failures no
    longer count."""
    lab = make_lab(sim_dead_boards="b2")
    enrol(lab, {"b2": BOARDS["b2"]})
    lab.until(lambda: lab.state("b2") == "failed_health")
    lab.engine.fire("board", "b2", "check", source="operator", actor="op",
                    reason="relay replaced (not really)")
    lab.until(lambda: lab.state("b2") in ("suspect", "failed_health"))
    assert lab.state("b2") == "suspect"
    assert "1 of its last 3 checks failed" in lab.results("b2")[-1]["rule"]


def test_an_image_that_fails_on_several_boards_is_blamed_and_the_next_one_tried(make_lab):
    """Boards that netboot image bad-1 never answer a ping; once it failed on
    health_image_threshold other boards within the window, the next board's
    failure on it is the image's: suspect, re-checked with good-2, ready."""
    checks = Definitions.of_list([Check(name="images", images=["bad-1", "good-2"], steps=[
        NetbootStep(step="netboot"), PingStep(step="ping")], rules=Rules(max_checking=1))])
    lab = make_lab(checks, health_image_threshold=2)
    ping = lab.steps.handlers["ping"]

    def ping_unless_bad_image(ctx: Any) -> Any:
        from corral.operations.base import OperationFailed

        if ctx.vars.get("release") == "bad-1":
            raise OperationFailed("no answer (the image did not boot)")
        return ping(ctx)

    lab.steps.handlers["ping"] = ping_unless_bad_image
    boards = {b: BOARDS[b] for b in ("b1", "b2", "b3", "b5")}
    enrol(lab, boards)
    lab.until(lambda: all(lab.state(b) == "ready" for b in boards), rounds=200)
    first = [lab.results(b)[0] for b in sorted(boards, key=lambda b: lab.results(b)[0]["id"])]
    assert all(r["image"] == "bad-1" and r["outcome"] == "failed" for r in first)
    # The first two are the boards' (nothing else failed on bad-1 yet); from
    # the third on, bad-1 had failed on two other boards: the image's.
    assert [r["blame"] for r in first] == ["board", "board", "image", "image"]
    assert "blamed on the image" in first[2]["rule"]
    for board in boards:
        assert [(r["image"], r["decision"]) for r in lab.results(board)] == [
            ("bad-1", "suspect"), ("good-2", "passed")]


def test_a_hard_fault_fails_a_board_at_once(make_lab):
    checks = Definitions.of_list([Check(name="strict", selector="arch=arm64", steps=[
        PowerCycleStep(step="power_cycle", hard=True), PingStep(step="ping")])])
    lab = make_lab(checks, sim_dead_boards="b3")
    enrol(lab)
    lab.until(lambda: lab.state("b3") == "failed_health")
    [result] = lab.results("b3")
    assert result["rule"].startswith("hard fault at power_cycle")


def test_a_dead_controller_is_blamed_its_boards_wait_unknown_and_come_back(make_lab):
    # relay-9 stops answering at once, for 10 minutes; everything checks at once.
    checks = Definitions.of_list([Check(name="all", steps=[
        PowerCycleStep(step="power_cycle"), PingStep(step="ping")], rules=Rules(max_checking=1))])
    lab = make_lab(checks, sim_controller_outage="relay-9@0+600", health_backoff=60)
    enrol(lab)
    behind = ["b5", "b6", "b7", "b8"]

    def degraded() -> dict[str, Any]:
        with lab.engine.store.unit() as tx:
            return tx.health.equipment(state="degraded")

    lab.until(lambda: degraded())
    [(equipment, row)] = degraded().items()
    assert equipment == "controller:relay:relay-9"
    # The third board failing there within the window found it degraded.
    assert (row["backoff_s"], row["retry_at"] - row["since"]) == (60, timedelta(seconds=60))
    lab.until(lambda: all(lab.state(b) == "unknown" for b in behind))
    # Boards behind the other relay never noticed.
    assert all(lab.state(b) == "ready" for b in ("b1", "b2", "b3", "b4"))
    blames = {r["blame"] for b in behind for r in lab.results(b) if r["decision"] == "unknown"}
    assert blames == {"controller"}
    # The failures before it was found degraded are its too, not the boards'
    # (they would count towards k of n otherwise).
    assert {r["blame"] for b in behind for r in lab.results(b)} == {"controller"}
    assert "which is degraded" in str(lab.engine.explain("board", "b8")) or \
        "is degraded" in str(lab.engine.explain("board", "b8"))
    # The canary probes double their wait: 60 s, then 120, 240, ...
    backoffs = []
    for _ in range(60):
        lab.step(10)
        with lab.engine.store.unit() as tx:
            now = tx.health.equipment().get(equipment)
        if now and now["state"] == "degraded" and now["backoff_s"] not in backoffs:
            backoffs.append(now["backoff_s"])
        if now and now["state"] == "ok":
            break
    assert backoffs[0] in (60, 120)
    assert backoffs[1:3] == [backoffs[0] * 2, backoffs[0] * 4]
    # Once it answers, a probe passes and every board behind it comes back.
    lab.until(lambda: all(lab.state(b) == "ready" for b in behind), seconds=30)
    assert not any(r["decision"] == "failed" for b in BOARDS for r in lab.results(b))
    with lab.engine.store.unit() as tx:
        assert tx.health.equipment()[equipment]["state"] == "ok"


def test_the_probe_backoff_keeps_doubling_while_the_canary_is_out_checking(make_lab):
    """A probe's check can outlast the backoff. When the next probe comes due
    meanwhile, no board is unknown (the canary is out checking), and the
    controller must not be forgotten then: that started its backoff over at
    every failure (20, 20, 20 s instead of 20, 40, 80)."""
    checks = Definitions.of_list([Check(name="all", steps=[
        PowerCycleStep(step="power_cycle"), PingStep(step="ping")], rules=Rules(max_checking=1))])
    lab = make_lab(checks, sim_controller_outage="relay-9@0+30000", health_backoff=20,
                   health_equipment_threshold=1)
    enrol(lab, {"b5": BOARDS["b5"]})
    equipment = "controller:relay:relay-9"

    def controller() -> dict[str, Any]:
        with lab.engine.store.unit() as tx:
            return tx.health.equipment().get(equipment) or {}

    lab.until(lambda: lab.state("b5") == "unknown")
    backoffs = [controller()["backoff_s"]]
    for _ in range(3):
        lab.clock.advance(controller()["backoff_s"] + 1)
        lab.health.run_pass()                  # the probe: the canary queues and is admitted
        assert lab.state("b5") in ("check_queued", "checking")
        backoffs.append(controller()["backoff_s"])
        lab.clock.advance(controller()["backoff_s"] + 1)
        lab.health.run_pass()                  # due again, the canary still out checking
        assert controller()["state"] == "degraded", controller()
        # Its check fails: unknown again, the controller still to blame.
        lab.until(lambda: lab.state("b5") == "unknown", seconds=1)
        assert controller()["state"] == "degraded"
    assert backoffs == [20, 40, 80, 160]


def test_an_operator_checks_a_board_on_demand_and_a_burn_in_keeps_pass_rates(make_lab):
    lab = make_lab()
    enrol(lab)
    lab.until(lambda: set(lab.states().values()) == {"ready"})
    lab.health.request("b1", loop=2, actor="op", reason="burn-in")
    assert lab.state("b1") == "check_queued"
    lab.until(lambda: len(lab.results("b1")) == 4 and lab.state("b1") == "ready")
    assert [r["decision"] for r in lab.results("b1")] == ["passed"] * 4
    with lab.engine.store.unit() as tx:
        rates = tx.health.pass_rates(by="board", since=lab.clock() - timedelta(days=1))
        assert tx.health.board("b1")["loop"] == 0
    assert rates["b1"] == (4, 4)


def test_proven_boards_are_checked_again_every_n_hours(make_lab):
    checks = Definitions.of_list([Check(name="hourly", steps=[PingStep(step="ping")],
                                        rules=Rules(every_hours=1, max_checking=1))])
    lab = make_lab(checks)
    enrol(lab, {"b1": BOARDS["b1"]})
    lab.until(lambda: lab.state("b1") == "ready")
    lab.step(1800)
    assert len(lab.results("b1")) == 1
    lab.clock.advance(1801)
    lab.until(lambda: len(lab.results("b1")) == 2)
    assert ("check_due", "check_queued") in lab.events("b1")


def test_every_way_into_ready_goes_through_the_check(machines: Any, tmp_path: Path) -> None:
    """Only the check path, a held board handed back, and an operator's
    forced state enter ready: a ready board is a proven one."""
    board = machines["board"].definition
    into_ready = {(t.trigger, s) for t in board.transitions for s in t.sources
                  if t.dest == "ready" and s != "ready"}
    assert into_ready == {("check_passed", "judging"), ("check_held", "check_queued"),
                          ("lease_unhold", "leased")}


def test_the_check_route_and_the_metrics(make_lab):
    import httpx

    from corral.api.app import create_app
    from corral.api.metrics import build_registry
    from corral.tokens import TokenStore
    from tests.serving import serving

    lab = make_lab(sim_dead_boards="b2")
    enrol(lab, {"b1": BOARDS["b1"], "b2": BOARDS["b2"]})
    lab.until(lambda: lab.state("b1") == "ready" and lab.state("b2") == "suspect")
    tokens = TokenStore(lab.engine.store, cache_seconds=0)
    operator, viewer = tokens.issue("op", "operator"), tokens.issue("view", "viewer")
    registry = build_registry(lab.engine)
    app = create_app(lab.engine, tokens, registry)
    with serving(app) as (address, _), httpx.Client(
            base_url=f"http://{address[0]}:{address[1]}", timeout=30) as http:
        def post(token: str, body: Any, board: str = "b1") -> httpx.Response:
            return http.post(f"/api/v1/boards/{board}/check", json=body,
                             headers={"Authorization": f"Bearer {token}"})

        before = lab.events("b1")
        assert post(viewer, {}).status_code == 403
        assert post(operator, {"loop": -1}).status_code == 422
        assert post(operator, {"loop": 1, "extra": 1}).status_code == 422
        assert post(operator, {}, board="nope").status_code == 404
        assert lab.events("b1") == before
        answer = post(operator, {"loop": 1, "reason": "burn-in"})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["from_state"], answer.json()["state"]) == ("ready",
                                                                            "check_queued")
        # Already queued: refused, nothing changes.
        refused = post(operator, {})
        assert refused.status_code == 409, refused.text
        lab.until(lambda: len(lab.results("b1")) == 3 and lab.state("b1") == "ready")
        text = http.get("/metrics").text
    assert 'corral_health_checks{blame="none",check="default",decision="passed"} 3.0' in text
    assert 'corral_health_board_pass_rate{board="b1"} 1.0' in text
    assert 'corral_boards_health{health="proven"} 1.0' in text
    assert 'corral_health_boards{check="default",state="suspect"} 1.0' in text or \
        'corral_health_boards{check="default",state="failed_health"} 1.0' in text


def test_power_failures_outside_checks_behind_one_controller_are_its_own(make_lab):
    """Boards rebooted while their relay is down fail their power cycles
    (failed_power_cycling); together, they are the relay's: unknown, and back
    by themselves once it answers."""
    lab = make_lab(sim_controller_outage="relay-9@600+900", health_backoff=60)
    enrol(lab)
    lab.until(lambda: set(lab.states().values()) == {"ready"})
    lab.clock.advance(600 - (lab.clock() - START).total_seconds() + 1)
    behind = ["b5", "b6", "b7", "b8"]
    for board in behind:
        lab.engine.fire("board", board, "reboot", source="operator")
    lab.until(lambda: all(lab.state(b) in ("failed_power_cycling", "unknown") for b in behind),
              seconds=30)
    lab.step(5)
    assert all(lab.state(b) == "unknown" for b in behind), lab.states()
    with lab.engine.store.unit() as tx:
        assert "controller:relay:relay-9" in tx.health.equipment(state="degraded")
    assert "failed their power commands" in str(lab.engine.explain("board", "b5"))
    lab.until(lambda: all(lab.state(b) == "ready" for b in behind), rounds=120, seconds=30)
    assert all(lab.state(b) == "ready" for b in ("b1", "b2", "b3", "b4"))

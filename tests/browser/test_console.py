"""The operator console in a real headless browser (Debian's chromium, driven
by Selenium through chromedriver) against a real ``corral serve``.

Marked ``browser`` and ``slow``; skips without chromium and chromedriver,
fails instead under ``CORRAL_REQUIRE_LAB=1``. Screenshots of the fleet, of
a board's page, the diagram, the leases view and a queued lease are saved in
``var/test-artifacts/console/``.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from corral.engine.core import Engine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from corral.tokens import TokenStore
from tests.acceptance.test_events import _serve
from tests.acceptance.test_http import free_port
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts" / "console"
REQUIRE = os.environ.get("CORRAL_REQUIRE_LAB") == "1"

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _browser():  # type: ignore[no-untyped-def]
    missing = [p for p in ("chromium", "chromedriver") if shutil.which(p) is None]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (PyPI)")
    if missing:
        reason = f"the console tests need {', '.join(missing)} (Debian chromium, chromium-driver)"
        if REQUIRE:
            pytest.fail(f"CORRAL_REQUIRE_LAB=1 but {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 "--enable-precise-memory-info"):
        options.add_argument(flag)
    # The console's own messages, Content-Security-Policy refusals among them.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def _wait(driver, condition, seconds: float = 20, what: str = "the page") -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = condition(driver)
        except Exception:  # not rendered yet
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} never appeared; page text: "
                         f"{driver.find_element('tag name', 'body').text[:1500]}")


@pytest.fixture
def console(tmp_path):  # type: ignore[no-untyped-def]
    with _console(f"sqlite:///{tmp_path}/corral.db", tmp_path) as lab:
        yield lab


@contextmanager
def _console(url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A browser and a served lab of five boards on the database at ``url``."""
    driver = _browser()
    from tests.conftest import _migrate

    _migrate(url)
    store = open_store(url)
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    engine.import_machines("board", {f"b{i}": {"arch": "arm64"} for i in range(1, 6)})
    for i in range(1, 6):
        engine.force_state("board", f"b{i}", "ready", actor="test", reason="set-up")
    engine.force_state("board", "b1", "pxe_booting", actor="test", reason="set-up")
    engine.force_state("board", "b3", "failed_pinging", actor="test", reason="dead NIC")
    tokens = TokenStore(store, cache_seconds=0)
    issued = {"operator": tokens.issue("olga", "operator"),
              "viewer": tokens.issue("vic", "viewer"), "board": tokens.issue_for_board("b1"),
              "admin": tokens.issue("ada", "admin"),
              **{name: tokens.issue(name, "user") for name in ("alice", "bob", "carol", "dave")}}
    port = free_port()
    server = _serve(url, tmp_path, port, 0)
    try:
        yield driver, f"http://127.0.0.1:{port}", issued, engine
    finally:
        driver.quit()
        stop(server)
        store.dispose()


def _login(driver, base: str, token: str) -> None:  # type: ignore[no-untyped-def]
    driver.get(base + "/")
    _wait(driver, lambda d: d.find_element("id", "token").is_displayed(), what="the login form")
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("css selector", "#login button").click()
    _wait(driver, lambda d: "boards" in d.find_element("id", "total").text, what="the fleet")


def _row(driver, name: str):  # type: ignore[no-untyped-def]
    return driver.find_element("css selector", f'.row[data-name="{name}"]')


def _refused_by_policy(driver) -> list[str]:  # type: ignore[no-untyped-def]
    """What the page's Content-Security-Policy refused so far."""
    return [entry["message"] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"]]


def test_an_operator_watches_the_fleet_live_and_forces_a_state(console):
    driver, base, tokens, _engine = console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _login(driver, base, tokens["operator"])
    assert tokens["operator"] not in driver.current_url
    # Failed boards first, and counted per state.
    first = driver.find_elements("css selector", "#rows .row")[0]
    assert first.get_attribute("data-name") == "b3"
    chips = driver.find_element("id", "chips").text
    assert "failed_pinging 1" in chips
    assert "ready 3" in chips
    # Rows are placed one under the other (by the script: the policy refuses
    # style attributes in markup).
    tops = driver.execute_script(
        "return [...document.querySelectorAll('#rows .row')].map((r) => r.offsetTop)")
    assert tops == [28 * i for i in range(1, 6)]
    driver.save_screenshot(str(ARTIFACTS / "fleet.png"))
    # A board's callback changes its row without a reload.
    _wait(driver, lambda d: "on" in d.find_element("id", "live").get_attribute("class"),
          what="the live stream")
    reply = httpx.post(f"{base}/api/v1/boards/b1/events/second_stage_started",
                       headers={"Authorization": f"Bearer {tokens['board']}"}, json={})
    assert reply.status_code == 200
    _wait(driver, lambda d: "installing" in _row(d, "b1").text, what="b1 installing")
    # Force a state and find it in the history.
    driver.get(f"{base}/#/board/b2")
    _wait(driver, lambda d: d.find_element("id", "force"), what="the actions")
    driver.find_element("id", "force-state").send_keys("maintenance")
    driver.find_element("id", "force-reason").send_keys("swap SD card")
    driver.find_element("css selector", "#force button").click()
    _wait(driver, lambda d: "swap SD card" in d.find_element("id", "history").text,
          what="the forced state in the history")
    _wait(driver, lambda d: d.find_element("id", "machine-state").text == "maintenance",
          what="b2 in maintenance")
    driver.save_screenshot(str(ARTIFACTS / "board.png"))
    # Follow the failed board to its explanation.
    driver.get(f"{base}/#/boards")
    _wait(driver, lambda d: _row(d, "b3"), what="b3's row")
    _row(driver, "b3").find_element("tag name", "a").click()
    summary = _wait(driver, lambda d: d.find_element("id", "summary").text, what="explain")
    assert "failed_pinging" in str(summary)
    assert "dead NIC" in str(summary)
    driver.get(f"{base}/#/diagram/board")
    _wait(driver, lambda d: "failed_pinging" in d.find_element("id", "diagram").text,
          what="the diagram")
    assert "1 board" in driver.find_element("id", "diagram").text
    driver.save_screenshot(str(ARTIFACTS / "diagram.png"))
    assert _refused_by_policy(driver) == []


def test_an_operator_health_checks_a_failed_board_from_its_page(console):
    """The board page's health check: b3 (failed_pinging) queues for a check
    with a burn-in of two more, and the history says so."""
    driver, base, tokens, engine = console
    _login(driver, base, tokens["operator"])
    driver.get(f"{base}/#/board/b3")
    _wait(driver, lambda d: d.find_element("id", "check"), what="the health check form")
    # The check is the form's, not a bare event button beside it.
    fired = [b.text for b in driver.find_elements("css selector", "button.fire")]
    assert "check" not in fired
    loop = driver.find_element("id", "check-loop")
    loop.clear()
    loop.send_keys("2")
    driver.find_element("id", "check-reason").send_keys("NIC reseated")
    driver.find_element("css selector", "#check button").click()
    _wait(driver, lambda d: "check_queued" in d.find_element("id", "action-result").text,
          what="the check's answer")
    assert engine.get("board", "b3").state == "check_queued"
    [entry] = engine.history("board", "b3", limit=1)
    assert (entry.event, entry.reason, entry.actor) == ("check", "NIC reseated", "olga")
    with engine.store.unit() as tx:
        assert tx.health.board("b3")["loop"] == 2
    assert _refused_by_policy(driver) == []


def test_a_viewer_sees_no_actions(console):
    driver, base, tokens, _engine = console
    _login(driver, base, tokens["viewer"])
    driver.get(f"{base}/#/board/b2")
    _wait(driver, lambda d: d.find_element("id", "summary").text, what="explain")
    assert driver.find_elements("id", "actions") == []
    assert driver.find_elements("css selector", "button.fire") == []


def test_a_wrong_token_is_refused_at_the_login(console):
    driver, base, _tokens, _engine = console
    driver.get(base + "/")
    _wait(driver, lambda d: d.find_element("id", "token").is_displayed(), what="the login form")
    driver.find_element("id", "token").send_keys("corral_1_nope")
    driver.find_element("css selector", "#login button").click()
    _wait(driver, lambda d: "log in again" in d.find_element("id", "login-error").text,
          what="the refusal")


def test_ten_thousand_boards_render_measured(console):
    driver, base, tokens, engine = console
    engine.import_machines("board", {f"fleet-{i:05d}": {} for i in range(10_000)})
    started = time.monotonic()
    _login(driver, base, tokens["operator"])
    _wait(driver, lambda d: "10005 of 10005" in d.find_element("id", "total").text,
          seconds=120, what="10,005 boards")
    first_render = time.monotonic() - started
    rows = len(driver.find_elements("css selector", "#rows .row"))
    heap = driver.execute_script("return performance.memory.usedJSHeapSize")
    print(f"console: 10,005 boards, first render {first_render:.2f} s (login to the full "
          f"list), {rows} rows in the DOM, JS heap {heap / 2**20:.1f} MiB")
    assert rows < 100  # the list is virtualised: only what is visible is drawn
    driver.find_element("id", "search").send_keys("fleet-0999")
    _wait(driver, lambda d: "10 of 10005" in d.find_element("id", "total").text,
          what="the search")


def test_the_console_lists_the_kinds_the_server_loaded(tmp_path, monkeypatch):
    """A lab whose statemachines/ has only boards gets no pool or job pages."""
    machines = tmp_path / "machines"
    machines.mkdir()
    shutil.copy(DEFAULT_STATEMACHINES_DIR / "board.yaml", machines)
    monkeypatch.setenv("CORRAL_STATEMACHINES_DIR", str(machines))
    driver = _browser()
    url = f"sqlite:///{tmp_path}/corral.db"
    from tests.conftest import _migrate

    _migrate(url)
    store = open_store(url)
    Engine(store, MachineSet(load_definitions(machines))).create("board", "b1")
    viewer = TokenStore(store, cache_seconds=0).issue("vic", "viewer")
    port = free_port()
    server = _serve(url, tmp_path, port, 0)
    try:
        _login(driver, f"http://127.0.0.1:{port}", viewer)
        links = [a.text for a in driver.find_elements("css selector", "#kinds a")]
        assert links == ["boards", "diagram"]
    finally:
        driver.quit()
        stop(server)
        store.dispose()


def _lease(base: str, token: str, **body: object) -> dict:  # type: ignore[type-arg]
    answer = httpx.post(f"{base}/api/v1/leases", json=body,
                        headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_the_leases_view_shows_the_queue_the_holders_and_an_explanation(console):
    driver, base, tokens, _engine = console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # b2, b4 and b5 are ready: alice takes b2, dave the other two; the rest wait.
    hostile = "<script>window.pwned = 1</script> smoke"
    alice = _lease(base, tokens["alice"], board="b2", heartbeat=60, purpose=hostile)
    dave = _lease(base, tokens["dave"], selector="arch=arm64", count=2, duration=7200,
                  purpose="soak")
    assert (alice["state"], dave["state"]) == ("active", "active")
    bob = _lease(base, tokens["bob"], selector="arch=arm64", count=3, project="kernel",
                 purpose='<img src=x id="injected">')
    carol = _lease(base, tokens["carol"], selector="arch=arm64", priority=10,
                   purpose="bisect")
    assert (bob["state"], carol["state"]) == ("queued", "queued")
    _login(driver, base, tokens["admin"])
    _wait(driver, lambda d: "on" in d.find_element("id", "live").get_attribute("class"),
          what="the live stream")
    driver.find_element("css selector", '#kinds a[data-kind="lease"]').click()
    _wait(driver, lambda d: carol["id"] in d.find_element("id", "queue").text,
          what="the queue")
    # The classes in the order the scheduler serves them, each lease at its place.
    classes = [t.get_attribute("data-priority")
               for t in driver.find_elements("css selector", "#queue table")]
    assert classes == ["10", "0"]
    bob_row = driver.find_element("css selector", f'#queue tr[data-lease="{bob["id"]}"]').text
    assert "bob for kernel" in bob_row
    assert "3 \u00d7 arch=arm64" in bob_row  # 3 times
    assert '<img src=x id="injected">' in bob_row  # shown as text
    # The holders, their boards, expiry and heartbeat.
    alice_row = driver.find_element("css selector",
                                    f'#holding tr[data-lease="{alice["id"]}"]').text
    assert "active" in alice_row
    assert "b2" in alice_row
    assert "in 60 min" in alice_row  # the default hour
    assert "every 60 s, due in" in alice_row
    assert hostile in alice_row
    dave_row = driver.find_element("css selector",
                                   f'#holding tr[data-lease="{dave["id"]}"]').text
    assert "b4, b5" in dave_row
    assert "in 2.0 h" in dave_row
    # User input stays text: no element or script of its making ran.
    assert driver.find_elements("id", "injected") == []
    assert driver.execute_script("return window.pwned") is None
    # Live: a new request joins the queue, a cancelled one is among the ended.
    late = _lease(base, tokens["dave"], board="b5", purpose="late")
    _wait(driver, lambda d: late["id"] in d.find_element("id", "queue").text,
          what="the new request in the queue")
    cancelled = httpx.post(f"{base}/api/v1/leases/{late['id']}/release",
                           headers={"Authorization": f"Bearer {tokens['dave']}"}, json={})
    assert cancelled.json()["state"] == "cancelled"
    _wait(driver, lambda d: late["id"] in d.find_element("id", "ended").text
          and late["id"] not in d.find_element("id", "queue").text,
          what="the cancelled lease among the ended")
    assert "cancelled" in driver.find_element(
        "css selector", f'#ended tr[data-lease="{late["id"]}"]').text
    driver.save_screenshot(str(ARTIFACTS / "leases.png"))
    # A lease's explanation: its place, what holds the boards it could use.
    driver.find_element("css selector", f'#queue tr[data-lease="{bob["id"]}"] a').click()
    _wait(driver, lambda d: d.find_element("id", "position").text, what="bob's explanation")
    assert "place 1 of 1 in priority 0" in driver.find_element("id", "position").text
    assert "free: 0 of the 3 it needs" in driver.find_element("id", "why").text
    blocking = driver.find_element("id", "blocking").text
    assert alice["id"] in blocking
    assert dave["id"] in blocking
    assert "queue" in driver.find_element("id", "history").text
    driver.save_screenshot(str(ARTIFACTS / "lease.png"))
    assert driver.find_elements("id", "injected") == []
    # An active lease's page; an admin may revoke it from there.
    driver.get(f"{base}/#/lease/{alice['id']}")
    _wait(driver, lambda d: d.find_element("id", "lease-state").text == "active",
          what="alice's lease")
    assert "active until" in driver.find_element("id", "why").text
    assert hostile in driver.find_element("id", "explain").text
    driver.find_element("id", "revoke-reason").send_keys("rack work")
    driver.find_element("css selector", "#revoke button").click()
    _wait(driver, lambda d: d.find_element("id", "lease-state").text == "returning",
          what="the revoked lease returning")
    assert "rack work" in driver.find_element("id", "history").text
    assert driver.execute_script("return window.pwned") is None
    assert _refused_by_policy(driver) == []


def test_a_viewer_reads_leases_and_may_not_change_them(console):
    driver, base, tokens, _engine = console
    held = _lease(base, tokens["alice"], board="b2")
    _login(driver, base, tokens["viewer"])
    driver.get(f"{base}/#/lease/{held['id']}")
    _wait(driver, lambda d: d.find_element("id", "lease-state").text == "active",
          what="the lease")
    assert driver.find_elements("id", "actions") == []
    # The board's page links its holder's lease.
    driver.get(f"{base}/#/board/b2")
    _wait(driver, lambda d: d.find_element("id", "holder"), what="the holder")
    driver.find_element("css selector", "#holder a").click()
    _wait(driver, lambda d: held["id"] in d.find_element("id", "explain").text,
          what="the holder's lease")


@pytest.mark.mariadb
def test_on_mariadb_the_leases_view_follows_the_event_stream(tmp_path):
    """MariaDB has the event stream too: the leases view is live there."""
    from tests.conftest import scratch_mariadb_database

    with scratch_mariadb_database() as url, _console(url, tmp_path) as lab:
        driver, base, tokens, _engine = lab
        _login(driver, base, tokens["viewer"])
        driver.get(f"{base}/#/leases")
        _wait(driver, lambda d: "Nothing is queued" in d.find_element("id", "queue").text,
              what="the empty queue")
        held = _lease(base, tokens["alice"], board="b2")
        waiting = _lease(base, tokens["bob"], board="b2", purpose="after alice")
        _wait(driver, lambda d: waiting["id"] in d.find_element("id", "queue").text
              and held["id"] in d.find_element("id", "holding").text,
              seconds=15, what="the leases")
        assert "on" in driver.find_element("id", "live").get_attribute("class")


def test_a_boards_page_shows_its_console_and_follows_new_text(console):
    from datetime import UTC, datetime

    driver, base, tokens, engine = console
    now = datetime.now(UTC)
    with engine.store.unit() as tx:
        first = tx.consoles.begin(board="b2", history_id=None, now=now)
        tx.consoles.append(first, "U-Boot 2024.01\n<script>alert(1)</script>\n", now)
    _login(driver, base, tokens["viewer"])
    driver.get(f"{base}/#/board/b2")
    text = lambda d: d.find_element("id", "console-text").text  # noqa: E731
    _wait(driver, lambda d: "U-Boot 2024.01" in text(d), what="the console card")
    # Console text is text, never markup.
    assert "<script>alert(1)</script>" in text(driver)
    with engine.store.unit() as tx:
        tx.consoles.append(tx.consoles.attempt("b2"), "Starting kernel ...\n", now)
    _wait(driver, lambda d: "Starting kernel" in text(d), what="text that arrived later")
    with engine.store.unit() as tx:
        second = tx.consoles.begin(board="b2", history_id=None, now=now)
        tx.consoles.append(second, "second boot\n", now)
    _wait(driver, lambda d: text(d).startswith("second boot"), what="the next attempt")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "board-console.png"))
    options = driver.find_elements("css selector", "#console-attempt option")
    assert [o.get_attribute("value") for o in options] == ["1", "2"]
    options[0].click()
    _wait(driver, lambda d: "Starting kernel" in text(d), what="the first attempt again")

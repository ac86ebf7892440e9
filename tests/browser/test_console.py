"""The operator console in a real headless browser (Debian's chromium, driven
by Selenium through chromedriver) against a real ``corral serve``.

Marked ``browser`` and ``slow``; skips without chromium and chromedriver,
fails instead under ``CORRAL_REQUIRE_LAB=1``. Screenshots of the fleet and of
a board's page are saved in ``var/test-artifacts/console/``.
"""

from __future__ import annotations

import os
import shutil
import time
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
    driver = _browser()
    url = f"sqlite:///{tmp_path}/corral.db"
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
              "viewer": tokens.issue("vic", "viewer"), "board": tokens.issue_for_board("b1")}
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

"""The ``corral`` command as an operator runs it: real processes, real database."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral.engine.core import Engine, FireRequest
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]
CORRAL = str(Path(sys.executable).with_name("corral"))


@pytest.fixture
def corral(migrated_url, tmp_path):
    env = os.environ | {"CORRAL_DATABASE_URL": migrated_url, "CORRAL_LOG_FORMAT": "json"}
    env.pop("CORRAL_CONFIG", None)

    def run(*args: str, check: bool = True, extra_env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([CORRAL, *args], cwd=tmp_path, env=env | (extra_env or {}),
                                capture_output=True, text=True, timeout=timeout)
        assert "Traceback" not in result.stderr, result.stderr
        if check:
            assert result.returncode == 0, result.stderr
        return result

    run.url = migrated_url  # type: ignore[attr-defined]
    return run


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("boards:\n" + "".join(
        f'  - {{name: b{i}, arch: arm64, subarch: generic, mac: "02:00:00:00:00:0{i}"}}\n'
        for i in range(1, 4)))
    return path


def test_import_list_show_history(corral, inventory):
    assert "3 boards created, 0 updated" in corral("board", "import", str(inventory)).stdout
    assert "0 boards created, 3 updated" in corral("board", "import", str(inventory)).stdout
    boards = json.loads(corral("board", "list", "--json").stdout)
    assert [(b["name"], b["state"]) for b in boards] == [("b1", "new"), ("b2", "new"),
                                                         ("b3", "new")]
    table = corral("board", "list").stdout
    assert "b2" in table
    assert "new" in table
    shown = json.loads(corral("board", "show", "b1", "--json").stdout)
    assert shown["attrs"]["arch"] == "arm64"
    assert shown["allowed_events"] == ["maintenance", "retire"]
    history = json.loads(corral("board", "history", "b1", "--json").stdout)
    assert [h["event"] for h in history] == ["create"]


def test_event_and_force_state(corral, inventory):
    corral("board", "import", str(inventory))
    out = corral("board", "force-state", "b1", "ready", "--reason", "bench test").stdout
    assert "b1: new -> ready" in out
    out = corral("board", "event", "b1", "maintenance", "--reason", "relay swap").stdout
    assert "b1: ready -> maintenance" in out
    history = json.loads(corral("board", "history", "b1", "--json").stdout)
    assert history[0]["reason"] == "relay swap"
    assert history[0]["source"] == "operator"
    failed = corral("board", "list", "--failed", "--json").stdout
    assert json.loads(failed) == []


def test_sweep_once_forgets_old_idempotency_keys(corral, inventory):
    corral("board", "import", str(inventory))
    db = open_store(corral.url)
    machines = MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR))
    for hours_ago, keys in ((30, ["a", "b"]), (1, ["c"])):
        at = datetime.now(UTC) - timedelta(hours=hours_ago)
        engine = Engine(db, machines, clock=lambda at=at: at)
        engine.fire_batch([FireRequest(kind="board", name="b1", event="reboot",
                                       source="callback", idempotency=("board:b1", key))
                           for key in keys])
    db.dispose()
    kept = corral("sweep", "--once", extra_env={"CORRAL_IDEMPOTENCY_KEY_HOURS": "0"})
    assert "idempotency keys forgotten: 0" in kept.stdout
    assert "idempotency keys forgotten: 2" in corral("sweep", "--once").stdout
    assert "idempotency keys forgotten: 1" in corral(
        "sweep", "--once", extra_env={"CORRAL_IDEMPOTENCY_KEY_HOURS": "0.5"}).stdout


def test_disallowed_event_exits_nonzero_with_allowed_events(corral, inventory):
    corral("board", "import", str(inventory))
    # The local CLI holds the database's credentials: it may do what an admin may.
    result = corral("board", "event", "b1", "reboot", check=False)
    assert result.returncode == 4
    assert result.stderr.strip() == (
        "error: event 'reboot' is not allowed for board 'b1' in state 'new'; "
        "allowed events: maintenance, retire")
    # Only the board itself reports its install (by: board).
    result = corral("board", "event", "b1", "install_ok", check=False)
    assert result.returncode == 7
    assert result.stderr.strip() == (
        "error: install_ok is reported by the board itself; "
        "operators can force a state with `corral board force-state`")
    assert json.loads(corral("board", "history", "b1", "--json").stdout)[0]["event"] == "create"


def test_unknown_board_and_state_mismatch(corral, inventory):
    corral("board", "import", str(inventory))
    result = corral("board", "show", "ghost", check=False)
    assert (result.returncode, result.stderr.strip()) == (3, "error: unknown board 'ghost'")
    result = corral("board", "force-state", "b1", "maintenance", "--reason", "x",
                    "--if-state", "ready", check=False)
    assert result.returncode == 4
    assert "is in state 'new', not 'ready'; nothing was changed" in result.stderr
    result = corral("board", "force-state", "b1", "nowhere", "--reason", "x", check=False)
    assert result.returncode == 3
    assert "board has no state 'nowhere'" in result.stderr


def test_bad_payload_and_bad_inventory(corral, inventory, tmp_path):
    corral("board", "import", str(inventory))
    result = corral("board", "event", "b1", "retire", "--payload", "{nope", check=False)
    assert result.returncode == 2
    assert "not JSON" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("boards:\n  - name: b9\n    colur: red\n")
    result = corral("board", "import", str(bad), check=False)
    assert result.returncode == 2
    assert "bad.yaml:3: boards[0]: unknown key 'colur' (allowed: name, " in result.stderr
    assert len(json.loads(corral("board", "list", "--json").stdout)) == 3


def _broken_machines(tmp_path: Path, old: str, new: str) -> Path:
    directory = tmp_path / "machines"
    directory.mkdir(exist_ok=True)
    text = (ROOT / "statemachines" / "board.yaml").read_text()
    assert old in text
    (directory / "board.yaml").write_text(text.replace(old, new, 1))
    return directory


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    timeout: 300\n", "    timeout: 300\n    retries: 2\n",
         "states.ready: unknown key 'retries' (allowed:"),
        ("dest: rebooting, by: board}", "dest: rebootin, by: board}",
         "unknown target state 'rebootin'"),
        ("dest: retired\n    by: admin\n", "dest: retired\n    by: root\n",
         "by[0]: must be one of board, operator, admin, operation, timeout, holder, lease, "
         "health, not 'root'"),
        ("      failure: failed_pinging\n", "", "counter: missing required key 'failure'"),
    ],
)
def test_malformed_definition_stops_serve(corral, tmp_path, old, new, message):
    directory = _broken_machines(tmp_path, old, new)
    result = corral("--statemachines", str(directory), "serve", check=False, timeout=30)
    assert result.returncode == 2
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("error:"))
    assert f"{directory / 'board.yaml'}:" in line
    assert message in line


def test_a_state_a_service_needs_missing_stops_serve(corral, tmp_path):
    directory = tmp_path / "machines"
    shutil.copytree(ROOT / "statemachines", directory)
    job = directory / "job.yaml"
    job.write_text(job.read_text().replace("queued", "backlog"))
    for command in (("machines", "check"), ("serve",)):
        result = corral("--statemachines", str(directory), *command, check=False, timeout=30)
        assert result.returncode == 2, command
        assert (f"error: {job}:1: the jobs service needs state 'queued' in the job machine"
                in result.stderr), command


def test_unknown_operation_stops_serve(corral, tmp_path):
    directory = _broken_machines(tmp_path, "on_enter: [poll]", "on_enter: [pol]")
    result = corral("--statemachines", str(directory), "serve", check=False, timeout=30)
    assert result.returncode == 2
    assert "no backend runs operation 'pol'" in result.stderr


def test_serve_on_an_unmigrated_database_says_what_to_do(tmp_path):
    env = os.environ | {"CORRAL_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = subprocess.run([CORRAL, "serve"], env=env, capture_output=True, text=True,
                            timeout=30, cwd=tmp_path)
    assert result.returncode == 5
    assert "run `corral db upgrade`" in result.stderr


def test_bad_configuration_is_a_clear_error(corral):
    result = corral("board", "list", check=False, extra_env={"CORRAL_SWEEP_BATCH": "many"})
    assert result.returncode == 2
    assert "sweep_batch (from CORRAL_SWEEP_BATCH) must be a whole number" in result.stderr


@pytest.mark.slow
def test_simulated_lab_changes_states(corral, tmp_path):
    shutil.copy(ROOT / "examples" / "simlab.yaml", tmp_path / "simlab.yaml")
    corral("board", "import", "simlab.yaml")
    server = subprocess.Popen(
        [CORRAL, "serve", "--simulate", "--role", "worker"], cwd=tmp_path,
        env=os.environ | {"CORRAL_DATABASE_URL": corral.url, "CORRAL_TIMEOUT_SCALE": "0.05",
                          "CORRAL_SIM_OPERATION_SECONDS": "0", "CORRAL_LOG_FORMAT": "json"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        states: set[str] = set()
        while time.monotonic() < deadline:
            boards = json.loads(corral("board", "list", "--json").stdout)
            states = {b["state"] for b in boards}
            if "ready" in states:
                break
            time.sleep(0.5)
        assert "ready" in states, states
    finally:
        returncode = stop(server)
    assert returncode == 0



def test_unreachable_database_is_one_line(tmp_path):
    env = os.environ | {"CORRAL_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/corral"}
    result = subprocess.run([CORRAL, "board", "list"], env=env, capture_output=True, text=True,
                            timeout=30, cwd=tmp_path)
    assert result.returncode == 6
    assert result.stderr.startswith("error: database unavailable:")
    assert "Traceback" not in result.stderr


def test_bootres_import_and_list(corral, tmp_path):
    from tests.integration.mirrors import Mirror

    mirror = Mirror(tmp_path / "mirror")
    mirror.product("com.example:trusty:amd64", arch="amd64", release="trusty",
                   subarches="generic,hwe-t",
                   versions={"20140301": {"items": mirror.boot_items("t", "trusty")}})
    mirror.write()
    (tmp_path / "import.yaml").write_text(
        f"sources:\n  - url: {mirror.url}\n    mask: ['amd64/generic/*']\n"
        "sorting: [sources_order, num_subarches(less)]\nstorage: boot\n")
    result = corral("bootres", "import", "--config", "import.yaml")
    assert result.stdout.startswith("published snapshot ")
    assert "1 arch/subarch/release, 2 objects (2 downloaded)" in result.stdout
    listed = json.loads(corral("bootres", "list", "--storage", "boot", "--json").stdout)
    assert [(w["arch"], w["subarch"], w["release"], w["version"]) for w in listed] == [
        ("amd64", "generic", "trusty", "20140301")]
    table = corral("bootres", "list", "--storage", "boot").stdout
    assert "com.example:trusty:amd64" in table
    # Unchanged sources: the objects are already there, nothing is downloaded.
    again = corral("bootres", "import", "--config", "import.yaml")
    assert "2 objects (0 downloaded)" in again.stdout
    mirror.product("com.example:trusty:amd64", arch="amd64", release="trusty",
                   subarches="generic,hwe-t",
                   versions={"20140302": {"items": mirror.boot_items("t2", "trusty2")}})
    mirror.write()
    (mirror.root / "t2" / "kernel").write_bytes(b"kernel trustyX")
    failed = corral("bootres", "import", "--config", "import.yaml", check=False)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ")
    assert "t2/kernel: sha256 mismatch" in failed.stderr
    assert json.loads(corral("bootres", "list", "--storage", "boot", "--json").stdout
                      )[0]["version"] == "20140301"
    (tmp_path / "bad.yaml").write_text("sources: []\nstorage: boot\n")
    bad = corral("bootres", "import", "--config", "bad.yaml", check=False)
    assert bad.returncode == 2
    assert "bad.yaml:1: sources: must not be empty" in bad.stderr


MINIMAL_SPEC = (ROOT / "tests" / "golden" / "jobspec" / "v1" / "maize-minimal.yaml").read_text()


def test_job_validate_needs_no_database(tmp_path):
    # Nothing listens on port 1: a command that touched the database would exit 6.
    env = os.environ | {"CORRAL_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/corral"}
    env.pop("CORRAL_CONFIG", None)

    def validate(name: str, text: str) -> subprocess.CompletedProcess:
        (tmp_path / name).write_text(text)
        args = [CORRAL, "job", "validate", "-" if name == "-" else name]
        result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True,
                                timeout=60, input=text if name == "-" else None)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    for name, text in (("ok.yaml", MINIMAL_SPEC), ("-", MINIMAL_SPEC),
                       ("ok.json", json.dumps({
                           "apiVersion": "corral/v1", "kind": "Job", "job_name": "j",
                           "timeouts": {"job": {"hours": 1}, "action": {"hours": 1}},
                           "stages": [{"name": "s", "actions": [
                               {"name": "a", "waitForEventAction": {"event": "go"}}]}]}))):
        result = validate(name, text)
        assert (result.returncode, result.stdout) == (0, "valid\n"), result.stderr
    bad = validate("bad.yaml", MINIMAL_SPEC.replace("kind: Job", "kind: Device").replace(
        "{hours: 3}", "{hours: 7}"))
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "error: invalid job spec:",
        "  kind: must be 'Job', not 'Device'",
        "  timeouts.action: 7h is longer than the job timeout (6h)"]
    assert validate("-", "{not json").returncode == 2


V2_SPEC = (ROOT / "tests" / "golden" / "jobspec" / "v2" / "full.yaml").read_text()


def test_job_validate_takes_v1_and_v2_and_names_each_problem(tmp_path):
    env = os.environ | {"CORRAL_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/corral"}
    env.pop("CORRAL_CONFIG", None)

    def validate(text: str) -> subprocess.CompletedProcess:
        (tmp_path / "spec.yaml").write_text(text)
        result = subprocess.run([CORRAL, "job", "validate", "spec.yaml"], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    for text in (MINIMAL_SPEC, V2_SPEC):
        result = validate(text)
        assert (result.returncode, result.stdout) == (0, "valid\n"), result.stderr
    bad = validate(V2_SPEC.replace("count: 2", "count: 0").replace(
        "selector: \"arch=arm64, rack in (r1, r2), !broken\"", "selector: \"arch==arm64\""))
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "error: invalid job spec:",
        "  stages[0].actions[0].leaseAction.selector: selector term 'arch==arm64' is not one "
        "of key=value, key!=value, key in (a,b), key notin (a,b), key, !key",
        "  stages[0].actions[0].leaseAction.count: must be a whole number of at least 1, not "
        "the number 0"]
    # The version field decides: the same lease in a v1 spec is an unknown key.
    as_v1 = validate(V2_SPEC.replace("apiVersion: corral/v2", "apiVersion: corral/v1"))
    assert as_v1.returncode == 2
    assert "  stages[0].actions[0].leaseAction: unknown key; allowed keys: name, timeout, " \
           "failure_retry, osOverrideAction, holdAction, waitForEventAction" in as_v1.stderr


def test_job_spec_refuses_to_write_a_lease_as_v1(corral, tmp_path):
    (tmp_path / "spec.yaml").write_text(V2_SPEC)
    job = corral("job", "submit", "spec.yaml").stdout.split(":")[0]
    assert corral("job", "spec", job).stdout == V2_SPEC
    refused = corral("job", "spec", job, "--api-version", "corral/v1", check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (
        "error: cannot convert to corral/v1 without losing information: stages[0].actions[0]: "
        "action type leaseAction needs corral/v2; corral/v1 cannot express it\n")


def test_job_submit_refuses_hostile_specs_with_their_field(corral, tmp_path):
    for text, message in (
            (MINIMAL_SPEC.replace("apiVersion: corral/v1", "apiVersion: [corral/v1]"),
             "apiVersion: must be a string, not a list"),
            ('{"a": ' * 3000 + "1" + "}" * 3000, "(document): nested too deeply"),
            ("a: " + "[" * 3000 + "]" * 3000, "not valid YAML: nested more than")):
        (tmp_path / "spec.yaml").write_text(text)
        result = corral("job", "submit", "spec.yaml", check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: invalid job spec:\n")
        assert message in result.stderr
    assert json.loads(corral("job", "list", "--json").stdout) == []


# `corral` as `pip install corral` (without the power extra) runs it: the
# named packages do not import, whatever this environment has installed.
WITHOUT = """import sys
for package in sys.argv[1].split(","):
    for name in [n for n in sys.modules if n.startswith(package + ".")] + [package]:
        sys.modules[name] = None
from corral.cli.main import cli
cli(sys.argv[2:], prog_name="corral")
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_without_the_power_extra_a_redfish_board_is_refused_not_retried(corral, tmp_path):
    lab = tmp_path / "bmc.yaml"
    lab.write_text('boards:\n  - name: rf-1\n    mac: "02:00:00:00:00:11"\n'
                   '    power: {driver: redfish, address: "https://bmc-1.lab"}\n')

    def without_sushy(*args: str) -> subprocess.CompletedProcess:
        env = os.environ | {"CORRAL_DATABASE_URL": corral.url, "CORRAL_LOG_FORMAT": "json"}
        return subprocess.run([sys.executable, "-c", WITHOUT, "sushy", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)

    refused = without_sushy("board", "import", str(lab))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == (
        f"error: {lab}:4: boards[0].power.driver: driver redfish needs the power extra: "
        "pip install 'corral[power]'")
    assert json.loads(corral("board", "list", "--json").stdout) == []
    # Imported where the extra is installed, then served where it is not.
    corral("board", "import", str(lab))
    for args in (("serve", "--simulate", "--role", "worker"), ("sweep", "--once")):
        started = without_sushy(*args)
        assert started.returncode == 2, started.stderr
        assert started.stderr.strip().endswith(
            "error: driver redfish needs the power extra: pip install 'corral[power]' "
            "(board rf-1 names it)"), started.stderr


def test_commands_without_an_http_form_refuse_a_server_instead_of_a_local_database(tmp_path):
    """`--url` / CORRAL_URL names a server; a command that can only work on
    the database says so, and creates no ./var/corral.db beside the user."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CORRAL_DATABASE_URL", "CORRAL_CONFIG", "CORRAL_URL")}
    (tmp_path / "lab.yaml").write_text("boards:\n  - name: b1\n")
    for args, via_env in ((("token", "create", "alice", "--role", "admin"), False),
                          (("token", "list"), True), (("board", "import", "lab.yaml"), False),
                          (("board", "token", "b1"), True), (("webhook", "list"), False),
                          (("db", "upgrade"), True), (("serve", "--role", "worker"), False)):
        argv = [CORRAL, *args] if via_env else [CORRAL, "--url", "http://corral.lab:8080",
                                                *args]
        extra = {"CORRAL_URL": "http://corral.lab:8080"} if via_env else {}
        result = subprocess.run(argv, cwd=tmp_path, env=env | extra, capture_output=True,
                                text=True, timeout=60)
        given, unset = ("CORRAL_URL", "with CORRAL_URL unset") if via_env else (
            "--url", "without --url")
        assert (result.returncode, result.stderr.strip()) == (2, (
            f"error: `corral {' '.join(args[:2] if args[0] != 'serve' else args[:1])}` works "
            f"on the database itself (it has no HTTP form), but {given} names the server "
            f"http://corral.lab:8080: run it where the database is (on the server's host), "
            f"{unset}, and with --database-url or --config naming the database")), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.yaml"]


def _first_lines_on_a_terminal(argv: list[str], env: dict, cwd: Path, until: str) -> str:
    """What ``argv`` writes to a terminal (a pty) until ``until`` appears."""
    import pty
    import select

    main, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=terminal,
                               stderr=terminal, env=env, cwd=cwd)
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while until.encode() not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(main, 65536)
                except OSError:  # the process has gone: its terminal is closed
                    break
    finally:
        stop(process)
        os.close(main)
    return seen.decode(errors="replace")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_on_a_terminal_logs_readable_lines_and_json_when_asked(corral, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_LOG_FORMAT", "CORRAL_URL")}
    env |= {"CORRAL_DATABASE_URL": corral.url}
    serve = [CORRAL, "serve", "--simulate", "--role", "worker"]
    shown = _first_lines_on_a_terminal(serve, env, tmp_path, "serving")
    line = next(line for line in shown.splitlines() if "serving" in line)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    assert "\x1b[" in line, line  # coloured
    # The message is the headline, after the time and the level; no JSON.
    assert re.match(r"\S+Z \[info\s*\] serving\s+\S+=", plain), plain
    assert "msg=" not in plain
    assert not plain.lstrip().startswith("{")
    asked = _first_lines_on_a_terminal([*serve, "--log-format", "json"], env, tmp_path,
                                       '"serving"')
    line = next(line for line in asked.splitlines() if '"serving"' in line)
    assert json.loads(line)["msg"] == "serving"
    # Not a terminal: JSON, as a service manager's journal wants it.
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(serve, env=env, cwd=tmp_path, stdout=out, stderr=out,
                                   stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while '"serving"' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        stop(process, log=log)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    assert all(isinstance(json.loads(line), dict) for line in lines), lines

"""Names and their patterns: each accepts and refuses what the checks it
replaced accepted and refused, and the enums hold the words the code stores."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from corral import names
from corral.engine.events import SOURCE_ROLES
from corral.machines.definition import FIRERS, HUMAN_FIRERS
from corral.names import OperationStatus, Role, Source
from corral.store.values import HISTORY_SOURCES
from corral.tokens import BOARD_ROLE, RANK, REIMAGE_ROLE, ROLES

# (identifier, names it accepts, names it refuses)
CASES = [
    (names.MACHINE_NAME,
     ["b1", "sim-0007", "testbed-cert-pool-1-f1", "job-17", "Rack3.slot_4", "9", "a" * 200],
     ["", "-b1", ".b1", "_b1", "b 1", "b/1", "b:1", "b1\n", "é", "a" * 201]),
    (names.FABRIC_NAME,
     ["f1", "0", "fab-east-2", "a" * 63],
     ["", "F1", "-f1", "f_1", "f.1", "f1\n", "a" * 64]),
    (names.JOB_RUN_ID,
     ["job-17", "run:2024.06.01_3", "A", "a" * 64],
     ["", ":run", "-run", "run 1", "run/1", "run1\n", "a" * 65]),
    (names.DEFINITION_NAME,
     ["idle", "power_cycle_ok", "a" * 63],
     ["", "Idle", "_idle", "1idle", "power-cycle", "power.cycle", "idle\n", "a" * 64]),
    (names.SIGNAL_NAME,
     ["go", "tests.done", "phase-2_ok", "a" * 63],
     ["", "Go", "1go", "-go", "go now", "go\n", "a" * 64]),
    (names.SHA256_HEX,
     ["0" * 64, "0123456789abcdef" * 4],
     ["0" * 63, "0" * 65, "A" * 64, "g" * 64, "0" * 64 + "\n"]),
]
IDS = [identifier.what for identifier, _, _ in CASES]


@pytest.mark.parametrize(("identifier", "good", "bad"), CASES, ids=IDS)
def test_each_pattern_accepts_and_refuses_its_examples(identifier, good, bad):
    assert [n for n in good if not identifier.matches(n)] == []
    assert [n for n in bad if identifier.matches(n)] == []
    # The compiled form: fullmatch (inventory, webhooks, callbacks, boot objects).
    assert [n for n in good if not identifier.regex.fullmatch(n)] == []
    assert [n for n in bad if identifier.regex.fullmatch(n)] == []


@pytest.mark.parametrize(("identifier", "good", "bad"), CASES, ids=IDS)
def test_pydantic_and_fastapi_take_the_anchored_pattern_alike(identifier, good, bad):
    class Body(BaseModel):
        name: str = Field(pattern=identifier.pattern)

    for name in good:
        Body(name=name)
    for name in bad:
        with pytest.raises(ValidationError):
            Body(name=name)


def test_match_keeps_the_old_anchored_patterns_trailing_newline():
    # The checks that call .match (pools, job specs, the definition loader)
    # took "x\n" with their "^...$" pattern before, and still do: this file
    # changes where a pattern is written, not what it accepts.
    assert names.FABRIC_NAME.regex.match("f1\n")
    assert not names.FABRIC_NAME.matches("f1\n")


def test_a_board_pool_and_webhook_name_are_machine_names():
    for alias in (names.BOARD_NAME, names.POOL_NAME, names.WEBHOOK_NAME):
        assert alias.pattern == names.MACHINE_NAME.pattern
    assert names.EVENT_NAME.pattern == names.DEFINITION_NAME.pattern
    assert names.BOARD_NAME.what == "board name"


def test_the_callback_route_checks_board_and_event_with_these_patterns():
    from corral.api.callbacks import EVENT, NAME

    assert NAME == names.MACHINE_NAME.pattern
    assert EVENT == names.EVENT_NAME.pattern


def test_operation_statuses_are_the_open_and_the_finished():
    assert set(OperationStatus) == {"pending", "running", "done", "failed", "stale"}
    assert set(names.OPEN_OPERATION_STATUSES) | set(names.FINISHED_OPERATION_STATUSES) == \
        set(OperationStatus)
    assert not set(names.OPEN_OPERATION_STATUSES) & set(names.FINISHED_OPERATION_STATUSES)


def test_sources_are_the_history_sources_in_order():
    assert tuple(Source) == HISTORY_SOURCES


def test_each_source_fires_as_the_engine_says():
    assert names.SOURCE_ROLES == SOURCE_ROLES


def test_roles_cover_firers_and_tokens():
    assert FIRERS == ("board", "operator", "admin", "operation", "timeout", "holder", "lease",
                      "health")
    assert FIRERS == names.FIRERS
    assert HUMAN_FIRERS == ("operator", "admin")
    assert ROLES == ("viewer", "user", "operator", "admin")
    assert (BOARD_ROLE, REIMAGE_ROLE) == ("board", "reimage")
    assert set(RANK) == {"board", "reimage", "holder", "viewer", "user", "operator", "admin"}
    assert set(Role) == set(FIRERS) | set(RANK)
    # The constants derived from the enums are plain strings (as the drivers
    # and the error messages expect), not enum members.
    assert all(type(role) is str for role in (*FIRERS, *HUMAN_FIRERS, *ROLES, *RANK))


def test_names_imports_nothing_but_the_standard_library():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(names.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "enum", "re", "dataclasses"}


WEBHOOK_URLS = (
    ["http://a", "https://hooks.example.com:8443/corral?x=1#y", "http://u:p%40ss@h/",
     "http://10.0.0.7:0/", "http://[::1]:8080/", "http://[fe80::1:2]/x",
     "http://[1:2:3:4:5:6:1.2.3.4]", "http://[1::2:3:4:5:6:7]", "http://[::]",
     "http://h:65535", "http://h/" + "a" * 1990],
    ["", "http://", "ftp://h", "HTTP://h", "http:/h", "http://h h", "http://h/a b",
     "http://h/\x7f", "http://h\n", "http://h/\r\nX: 1", "http://h:65536", "http://h:x",
     "http://[:]/", "http://[1.2.3.4]", "http://[1::2::3]", "http://a@b@c", "http://h/é"])


def test_a_webhook_url_is_http_with_a_host():
    good, bad = WEBHOOK_URLS
    assert [u for u in good if not names.WEBHOOK_URL.matches(u)] == []
    assert [u for u in bad if names.WEBHOOK_URL.matches(u)] == []

    class Body(BaseModel):
        url: str = Field(pattern=names.WEBHOOK_URL.pattern)

    for url in good:
        Body(url=url)
    for url in bad:
        with pytest.raises(ValidationError):
            Body(url=url)


@settings(max_examples=300)
@given(st.from_regex(names.WEBHOOK_URL.regex, fullmatch=True))
def test_every_webhook_url_the_pattern_takes_has_a_host_and_port_urllib_reads(url):
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.scheme in ("http", "https")
    assert parts.hostname
    assert parts.port is None or 0 <= parts.port <= 65535

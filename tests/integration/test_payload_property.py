"""The one payload check makes the backends agree: any JSON value is either
refused on SQLite, PostgreSQL and MariaDB alike, or stored on all three and
read back equal on each."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.engine.core import Engine
from corral.errors import InvalidRequest
from corral.store import open_store
from tests.conftest import ManualClock, scratch_mariadb_database, scratch_pg_database

# Floats and integers at and past every limit, strings with NUL and unpaired
# surrogates, keys too, and nesting past the 32 levels allowed.
scalars = (st.none() | st.booleans()
           | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF,
                                            exclude_categories=()), max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(alphabet=st.characters(exclude_categories=()), max_size=4),
                      inner, max_size=3),
    max_leaves=12)


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def same(a: object, b: object) -> bool:
    """Equal as JSON: numbers by value. (PostgreSQL's jsonb writes a float with
    no fraction back as an integer, 1e16 as 10000000000000000: JSON does not
    tell the two apart, and the float they denote is the same.)"""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) or isinstance(b, float):
            return float(a) == float(b)
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def engines(machines_module, tmp_path_factory):
    """A pinging board on a fresh SQLite, PostgreSQL and MariaDB database."""
    sqlite_url = f"sqlite:///{tmp_path_factory.mktemp('prop') / 'corral.db'}"
    with scratch_pg_database() as pg_url, scratch_mariadb_database() as mariadb_url:
        result = []
        for url in (sqlite_url, pg_url, mariadb_url):
            db = open_store(url)
            db.upgrade()
            engine = Engine(db, machines_module, clock=ManualClock())
            engine.create("board", "b1")
            engine.force_state("board", "b1", "pinging", actor="t", reason="t")
            result.append(engine)
        yield result
        for engine in result:
            engine.store.dispose()


@pytest.fixture(scope="module")
def machines_module():
    from corral.machines import MachineSet, load_definitions
    from corral.paths import DEFAULT_STATEMACHINES_DIR

    return MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR))


def store_and_read(engine: Engine, payload: object) -> object:
    """Fire an event that keeps the state (a failed ping) with ``payload``;
    returns what history reads back, or the refusal."""
    try:
        engine.fire("board", "b1", "ping_failed", source="operation", role="operation",
                    payload=payload)
    except InvalidRequest as exc:
        return exc
    return engine.history("board", "b1", limit=1)[0].payload


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.dictionaries(st.text(alphabet=st.characters(exclude_categories=()),
                                       max_size=4), json_values, max_size=4)
       | st.sampled_from([nested(31), nested(32), nested(33), {"a": 2**63 - 1},
                          {"a": 2**63}, {"a": -(2**63)}, {"a": "x" * 70_000}]))
def test_every_value_is_refused_on_all_or_read_back_on_all(engines, payload):
    read = [store_and_read(engine, payload) for engine in engines]
    refused = {isinstance(r, InvalidRequest) for r in read}
    assert len(refused) == 1, read
    if refused == {False}:
        for backend, value in zip(("sqlite", "postgres", "mariadb"), read, strict=True):
            assert same(value, payload), (backend, value)

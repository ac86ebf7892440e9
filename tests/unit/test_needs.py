"""Services (and the API's routes) name some states and events of the
(editable) definitions in code; a definition that lacks one stops start-up,
naming the file and the name."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.api.routes.boards import NEEDS as API_NEEDS
from corral.engine.core import Engine
from corral.jobs.service import NEEDS as JOB_NEEDS
from corral.machines import DefinitionError, MachineSet, load_definitions
from corral.machines.loader import parse_definition
from corral.machines.needs import check_needs
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.pools.service import NEEDS as POOL_NEEDS
from corral.store import open_store
from corral.tokens import TokenStore

ALL = [POOL_NEEDS, *JOB_NEEDS, API_NEEDS]


def test_the_shipped_definitions_have_what_the_services_need():
    check_needs(MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)), ALL)


def test_a_missing_state_or_event_names_the_file_and_the_name(tmp_path):
    definitions = load_definitions(DEFAULT_STATEMACHINES_DIR)
    text = (DEFAULT_STATEMACHINES_DIR / "job.yaml").read_text()
    edited = text.replace("queued", "backlog").replace("trigger: cancel", "trigger: abort")
    definitions["job"] = parse_definition(edited, "lab/job.yaml")
    with pytest.raises(DefinitionError) as info:
        check_needs(MachineSet(definitions), ALL)
    found = [str(p) for p in info.value.problems]
    assert found[0].startswith("lab/job.yaml:1: the jobs service needs state 'queued' in "
                               "the job machine; states: submitted, backlog,")
    assert found[1].startswith("lab/job.yaml:1: the jobs service needs event 'cancel' in "
                               "the job machine; events: abort,")
    assert len(found) == 2


def test_a_kind_that_is_not_loaded_turns_its_services_off():
    definitions = load_definitions(DEFAULT_STATEMACHINES_DIR)
    del definitions["pool"], definitions["job"]
    check_needs(MachineSet(definitions), ALL)


def test_the_api_refuses_a_board_machine_without_an_event_a_route_fires(tmp_path):
    definitions = load_definitions(DEFAULT_STATEMACHINES_DIR)
    text = (DEFAULT_STATEMACHINES_DIR / "board.yaml").read_text()
    assert "trigger: retire\n" in text
    edited = text.replace("trigger: retire\n", "trigger: decommission\n")
    definitions["board"] = parse_definition(edited, "lab/board.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'corral.db'}")
    engine = Engine(store, MachineSet(definitions))
    try:
        with pytest.raises(DefinitionError) as info:
            create_app(engine, TokenStore(store), CollectorRegistry())
    finally:
        store.dispose()
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("lab/board.yaml:1: the api service needs event 'retire' in "
                              "the board machine; events: ")
    assert "decommission" in problem

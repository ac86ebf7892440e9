"""Pure state machine definitions and transition logic.

This package imports no database, HTTP, gRPC or scheduler code: it loads and
validates ``statemachines/*.yaml`` and computes the outcome of an event.
"""

from corral.machines.definition import TIMEOUT_EVENT, Counter, MachineDefinition, StateDef
from corral.machines.loader import DefinitionError, load_definition, load_definitions
from corral.machines.machine import MachineSet, Outcome, StateMachine

__all__ = [
    "TIMEOUT_EVENT",
    "Counter",
    "DefinitionError",
    "MachineDefinition",
    "MachineSet",
    "Outcome",
    "StateDef",
    "StateMachine",
    "load_definition",
    "load_definitions",
]

"""Wiring: settings -> definitions, database, engine, operation backends.

Start-up fails fast and clearly: malformed definitions (file, line, reason),
an operation kind no backend runs, a bad database URL or a schema that is not
at head all stop the process before it touches a machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from corral.config import Settings
from corral.engine.core import Clock, Engine, utcnow
from corral.errors import ConfigError, UnknownMachine
from corral.health.service import install as install_health
from corral.jobs.service import reserve_job_events
from corral.leases.service import install as install_leases
from corral.machines import DefinitionError, MachineSet, load_definitions
from corral.machines.loader import Problem
from corral.pools.service import reserve_pool_events
from corral.store import open_store

# What only serving needs (operation backends, MO over gRPC, boot resources)
# is imported when it is built, so that a command starts quickly.
if TYPE_CHECKING:
    from corral.bootres.pxe import BootResourcePxe
    from corral.console.capture import ConsoleCapture
    from corral.engine.worker import OperationWorker
    from corral.health.definitions import Definitions
    from corral.health.service import HealthPass
    from corral.jobs.leasing import JobLeases
    from corral.leases.service import LeaseService
    from corral.mo.client import MoClient
    from corral.operations.base import Handler


def load_machines(settings: Settings) -> MachineSet:
    return MachineSet(load_definitions(Path(settings.statemachines_dir)))


def build_engine(settings: Settings, *, clock: Clock = utcnow, check_schema: bool = True
                 ) -> Engine:
    machines = load_machines(settings)
    store = open_store(settings.database_url,
                       pool_size=max(5, settings.operation_threads + settings.health_threads
                                     + 2))
    if check_schema:
        store.require_current()
    engine = Engine(store, machines, clock=clock, timeout_scale=settings.timeout_scale)
    reserve_pool_events(engine)
    reserve_job_events(engine)
    install_leases(engine)
    install_health(engine)
    return engine


def lease_service(engine: Engine, settings: Settings) -> LeaseService | None:
    """The lease service, running the scheduler's pass whenever a lease asks
    or ends (None in a lab whose statemachines/ has no lease machine)."""
    from corral.leases.model import KIND
    from corral.leases.scheduler import LeaseScheduler
    from corral.leases.service import LeaseService

    if KIND not in engine.machines:
        return None

    scheduler = LeaseScheduler(engine, settings)
    return LeaseService(engine, settings, kick=scheduler.run_pass)


def job_leases(engine: Engine, settings: Settings) -> JobLeases | None:
    """The leases of jobs (``leaseAction``): None in a lab without the job or
    the lease machine."""
    if "job" not in engine.machines:
        return None
    leases = lease_service(engine, settings)
    if leases is None:
        return None
    from corral.jobs.leasing import JobLeases

    return JobLeases(engine, leases)


def mo_client(settings: Settings) -> MoClient:
    """MO at ``mo_target`` (the channel connects on first use, so a lab without
    pools never needs MO)."""
    from corral.mo.client import MoClient

    return MoClient(settings.mo_target, deadline=settings.mo_deadline,
                    attempts=settings.mo_attempts)


def build_handlers(settings: Settings, *, simulate: bool | None = None,
                   engine: Engine | None = None) -> dict[str, Handler]:
    """Every operation backend: boards (simulated or commands), pools (MO) and,
    given the engine, jobs."""
    from corral.jobs.service import JobOperations, JobService
    from corral.pools.operations import MoOperations

    mo = mo_client(settings)
    handlers = _board_handlers(settings, simulate, engine)
    handlers |= _health_handlers(settings, engine, handlers) | MoOperations(mo).handlers()
    if engine is not None and "job" in engine.machines:
        service = JobService(engine, default_ttl=settings.mo_override_ttl)
        handlers |= JobOperations(service, mo, job_leases(engine, settings)).handlers()
    return handlers


# The operation a board's health check is (corral.health.steps): it runs for
# minutes, so it has workers of its own (build_workers).
HEALTH_CHECK = "health_check"


def _health_handlers(settings: Settings, engine: Engine | None,
                     board: Mapping[str, Handler]) -> dict[str, Handler]:
    """The health check operation, on the boards' own backends."""
    from corral.health.steps import HealthSteps

    if engine is None:
        return {HEALTH_CHECK: lambda ctx: None}  # only the kinds are wanted
    from corral.console import search

    store = engine.store

    def on_console(board: str, pattern: str, since: datetime) -> bool:
        return search(store, board, pattern, since=since) is not None

    return {HEALTH_CHECK: HealthSteps(
        store=store, definitions=health_definitions(settings), handlers=board,
        timeout_scale=settings.timeout_scale, pause=min(1.0, 10 * settings.timeout_scale),
        console=on_console, lease_seconds=settings.operation_lease)}


def health_definitions(settings: Settings) -> Definitions:
    """The health check definitions in ``statemachines/health``.

    Raises:
        HealthError: every problem, with file and line.
    """
    from corral.health.definitions import load

    return load(Path(settings.health_dir) if settings.health_dir
                else Path(settings.statemachines_dir) / "health")


def health_pass(engine: Engine, settings: Settings) -> HealthPass | None:
    """The health pass, None where the board machine has no check path."""
    from corral.health.service import HealthPass

    if "board" not in engine.machines or \
            "judging" not in engine.machines["board"].definition.states:
        return None
    return HealthPass(engine, settings, health_definitions(settings))


def _board_handlers(settings: Settings, simulate: bool | None, engine: Engine | None
                    ) -> dict[str, Handler]:
    """Boards' operations. Power goes to the driver each board names
    (redfish, ipmi, snmp, qemu, command, simulated), else to the process-wide
    backend: the simulated lab or the command templates."""
    from corral.operations.base import board_handlers
    from corral.operations.command import CommandBackend
    from corral.operations.simulated import SimulatedLab, SimulatedRates, parse_outage
    from corral.power.controllers import ControllerSlots
    from corral.power.drivers import CommandPower, SimulatedPower, protocol_drivers
    from corral.power.service import PowerOperations

    lab = SimulatedLab(seed=settings.sim_seed, rates=SimulatedRates(
        power_cycle_failure=settings.sim_power_cycle_failure,
        ping_failure=settings.sim_ping_failure,
        poll_failure=settings.sim_poll_failure,
        seconds=settings.sim_operation_seconds,
        dead_boards=tuple(n.strip() for n in settings.sim_dead_boards.split(",") if n.strip()),
        outage=parse_outage(settings.sim_controller_outage),
    ), clock=engine.clock if engine is not None else None)
    commands = CommandBackend({
        "power_cycle": settings.command_power_cycle,
        "power_on": settings.command_power_on,
        "power_off": settings.command_power_off,
        "set_boot_device": settings.command_set_boot_device,
        "ping": settings.command_ping,
        "poll": settings.command_poll,
        "write_pxe_config": settings.command_write_pxe_config,
        "boot_local": settings.command_boot_local,
    }, timeout=settings.command_timeout)
    simulated = simulate or (simulate is None and settings.backend == "simulated")
    slots = (ControllerSlots(engine.store, engine.clock,
                             wait_seconds=settings.power_controller_wait)
             if engine is not None else None)
    power = PowerOperations(
        {**protocol_drivers(), "simulated": SimulatedPower(lab), "command": CommandPower(commands)},
        default="simulated" if simulated else "command", slots=slots)
    backend: SimulatedLab | CommandBackend = lab if simulated else commands
    return board_handlers(power.handlers(), backend, _pxe(settings, engine) or backend)


def _pxe(settings: Settings, engine: Engine | None) -> BootResourcePxe | None:
    """Netboot configurations from the published boot resources, when
    pxe_root is set (and an engine is given: without one, only the operation
    kinds are wanted, and the fallback backend has the same).

    Raises:
        ConfigError: pxe_root is set but cannot be written, or boards would
            not know where to report (no boot_callback_url).
    """
    if not settings.pxe_root or engine is None:
        return None
    from corral.bootres.netboot import NEEDS
    from corral.bootres.pxe import BootResourcePxe
    from corral.machines.needs import check_needs
    from corral.tokens import TokenStore

    check_needs(engine.machines, [NEEDS])

    if not settings.boot_callback_url:
        raise ConfigError("pxe_root is set, so boot_callback_url must be too: the address "
                          "boards use to reach Corral, e.g. CORRAL_BOOT_CALLBACK_URL="
                          "http://10.0.0.1:8080")
    return BootResourcePxe(Path(settings.bootres_storage), Path(settings.pxe_root),
                           callback_url=settings.boot_callback_url,
                           tokens=TokenStore(engine.store, cache_seconds=0),
                           board_state=lambda name: _state_of(engine, name))


def _state_of(engine: Engine, name: str) -> str | None:
    try:
        return engine.get("board", name).state
    except UnknownMachine:
        return None


def check_power_libraries(engine: Engine) -> None:
    """Every board's power driver must be able to run here (its library, from
    the power extra, imports); only when one does not are the boards read.

    Raises:
        ConfigError: naming the driver, the extra and the boards that name it.
    """
    from corral.power.drivers import DRIVERS, drivers_missing_extra, missing_extra

    if "board" not in engine.machines or all(missing_extra(d) is None for d in DRIVERS):
        return
    missing = drivers_missing_extra(
        (row.name, row.attrs) for row in engine.list_machines("board"))
    if missing:
        raise ConfigError("; ".join(
            f"{message} ({_naming(names)})" for message, names in missing.items()))


def _naming(names: list[str], shown: int = 5) -> str:
    """"board b1 names it", "boards b1, b2 and 4 more name it"."""
    if len(names) == 1:
        return f"board {names[0]} names it"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"boards {', '.join(names[:shown])}{more} name it"


def check_operations(machines: MachineSet, handlers: Iterable[str]) -> None:
    """Every entry operation a definition names must have a backend.

    Raises:
        DefinitionError: naming the file and line of each unknown operation.
    """
    names = set(handlers)
    problems = []
    for machine in machines:
        for state in machine.definition.states.values():
            for op, line in zip(state.on_enter, state.on_enter_lines, strict=True):
                if op not in names:
                    problems.append(Problem(
                        path=machine.definition.path, line=line,
                        message=f"state {state.name!r}: no backend runs operation {op!r}; "
                                f"operations: {', '.join(sorted(handlers))}"))
    if problems:
        raise DefinitionError(problems)


def build_worker(engine: Engine, settings: Settings, handlers: dict[str, Handler]
                 ) -> OperationWorker:
    """A worker for every operation kind (``corral sweep --once``, tests)."""
    from corral.engine.worker import OperationWorker

    return OperationWorker(
        engine, handlers, owner=settings.owner, threads=settings.operation_threads,
        lease_seconds=settings.operation_lease, max_attempts=settings.operation_max_attempts,
        retry_delay=settings.operation_retry_delay,
    )


def build_workers(engine: Engine, settings: Settings, handlers: dict[str, Handler]
                  ) -> list[OperationWorker]:
    """``corral serve``'s workers: one for health checks (``health_threads``;
    a running check renews its lease at every try), one for the rest."""
    from corral.engine.worker import OperationWorker

    def worker(threads: int, lease: float, health: bool) -> OperationWorker:
        return OperationWorker(engine, handlers, owner=settings.owner, threads=threads,
                               lease_seconds=lease, kinds=(health, [HEALTH_CHECK]),
                               max_attempts=settings.operation_max_attempts,
                               retry_delay=settings.operation_retry_delay)

    return [worker(settings.operation_threads, settings.operation_lease, False),
            worker(settings.health_threads, settings.operation_lease, True)]

def console_capture(engine: Engine, settings: Settings) -> ConsoleCapture | None:
    """The console capture service of a worker process (None: no board machine).

    Raises:
        DefinitionError: a state of ``console_boot_states`` is not a board state.
    """
    from corral.console.capture import CaptureSettings, ConsoleCapture, needs
    from corral.machines.needs import check_needs

    if "board" not in engine.machines:
        return None
    states = tuple(s.strip() for s in settings.console_boot_states.split(",") if s.strip())
    check_needs(engine.machines, [needs(states)])
    return ConsoleCapture(
        engine.store, engine.clock, owner=settings.owner,
        settings=CaptureSettings(max_bytes=settings.console_max_bytes,
                                 lease=settings.console_lease,
                                 max_boards=settings.console_max_boards,
                                 boot_states=states,
                                 sim_dead_boards=frozenset(
                                     b.strip() for b in settings.sim_dead_boards.split(",")
                                     if b.strip())))

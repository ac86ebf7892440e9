"""Configuration: one TOML file, every setting also a ``CORRAL_<NAME>`` variable.

Precedence, lowest first: built-in defaults, the file (``--config`` /
``CORRAL_CONFIG``, else ``./corral.toml`` if present), environment variables,
command-line options. Every setting is listed in ``docs/configuration.md``; a
test keeps that page and :data:`SETTINGS` in step. A bad value stops start-up
with the setting's name, where it came from and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError

from corral.errors import ConfigError
from corral.operations.command import template_fields
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import DEFAULT_DATABASE_URL
from corral.validation import Strict, refuse

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]
Backend = Literal["simulated", "command"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
BACKENDS: tuple[str, ...] = get_args(Backend)


def _from_text(convert: Callable[[str], Any]) -> BeforeValidator:
    """A variable's text read as ``int`` or ``float`` the way Python reads a
    number (``"2.0"`` is not a whole number); other values are checked as they are."""
    def read(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return convert(value)
            except ValueError:
                return value
        return value
    return BeforeValidator(read)


def _probability(value: float) -> float:
    if not 0 <= value <= 1:
        raise refuse("must be between 0 and 1")
    return value


def _host_port(value: str) -> str:
    if _split_host_port(value) is None:
        raise refuse("must be HOST:PORT, e.g. 127.0.0.1:8080")
    return value


def _networks(value: str) -> str:
    wrong = _not_a_network(value)
    if wrong is not None:
        raise refuse("holds {part}, which is not a network such as 10.0.0.0/24",
                     part=repr(wrong))
    return value


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}


def _boolean(text: str) -> bool:
    """A variable's ``true``/``false`` (also 1/0, yes/no, on/off)."""
    word = text.strip().lower()
    if word not in _BOOLEANS:
        raise ValueError(text)
    return _BOOLEANS[word]


Bool = Annotated[bool, _from_text(_boolean)]


def _command_template(value: str) -> str:
    # The same rule as a board's own commands (corral.inventory): plain names
    # only, so that no template reaches past the board's values
    # ({name.__class__}, {power[0]}); checked when the settings load, not
    # when a board's operation first runs.
    try:
        template_fields(value)
    except ValueError as exc:
        raise refuse("holds a template that is not allowed: {reason}", reason=str(exc)) from None
    return value


Int = Annotated[int, _from_text(int)]
Float = Annotated[float, _from_text(float)]
PositiveInt = Annotated[Int, Field(gt=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
Count = Annotated[Int, Field(ge=0)]
Seconds = Annotated[Float, Field(ge=0)]
Probability = Annotated[Float, AfterValidator(_probability)]
HostPort = Annotated[str, AfterValidator(_host_port)]
Networks = Annotated[str, AfterValidator(_networks)]
Template = Annotated[str, AfterValidator(_command_template)]


class Settings(Strict):
    """Every setting with its type, default and check; ``CORRAL_<NAME>``
    variables are text, read as numbers where the setting is one."""

    database_url: str = DEFAULT_DATABASE_URL
    statemachines_dir: str = str(DEFAULT_STATEMACHINES_DIR)
    # Health check definitions (docs/health.md); empty: statemachines_dir/health.
    health_dir: str = ""
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    # HTTP
    listen: HostPort = "127.0.0.1:8080"
    http_threads: PositiveInt = 64
    # Seconds a client has to send a request's headers, then its body; slower
    # ones get 408 and are disconnected (they would hold a connection for ever).
    http_header_timeout: PositiveFloat = 10.0
    http_body_timeout: PositiveFloat = 30.0
    # API processes sharing the listen address (SO_REUSEPORT); about one core each.
    http_processes: PositiveInt = 1
    token_cache_seconds: Seconds = 2.0
    # How long a callback's Idempotency-Key is remembered (hours; 0: forever).
    idempotency_key_hours: Seconds = 24.0
    # Retention (days; 0: keep everything): history rows (each machine keeps
    # its newest) and finished operations older than this are deleted.
    history_retention_days: Seconds = 0.0
    operation_retention_days: Seconds = 0.0
    # Sweeps
    sweep_interval: PositiveFloat = 1.0
    sweep_batch: PositiveInt = 1000
    sweep_threads: PositiveInt = 2
    # Seconds between recounts of machines per state (the /metrics gauges).
    state_count_interval: PositiveFloat = 10.0
    timeout_scale: PositiveFloat = 1.0
    # Group commit: concurrent events in one process share transactions
    # (0 turns it off: one transaction per event).
    group_commit_threads: Count = 2
    group_commit_max_batch: PositiveInt = 64
    # Operations
    backend: Backend = "command"
    operation_interval: PositiveFloat = 0.5
    operation_threads: PositiveInt = 8
    operation_lease: PositiveFloat = 120.0
    operation_max_attempts: PositiveInt = 5
    operation_retry_delay: Seconds = 5.0
    command_timeout: PositiveFloat = 60.0
    command_power_cycle: Template = ""
    command_power_on: Template = ""
    command_power_off: Template = ""
    command_set_boot_device: Template = ""
    command_ping: Template = "ping -c 1 -W 2 {hostname}"
    command_poll: Template = "ping -c 1 -W 2 {hostname}"
    command_write_pxe_config: Template = ""
    worker_id: str = ""
    # The event stream: a comment every events_heartbeat seconds of silence;
    # the horizon looked at every events_interval seconds (PostgreSQL's
    # notifications move it at once).
    events_heartbeat: PositiveFloat = 15.0
    events_interval: PositiveFloat = 0.5
    # Webhook delivery (worker processes): how often subscriptions are looked
    # at, a POST's timeout, how long a process holds a subscription, failures
    # in a row before it is marked failing, and the longest wait between tries.
    webhook_interval: PositiveFloat = 0.5
    webhook_timeout: PositiveFloat = 10.0
    webhook_lease: PositiveFloat = 60.0
    webhook_failing_after: PositiveInt = 5
    webhook_max_backoff: PositiveFloat = 300.0
    # Where deliveries may connect (docs/security.md#webhook-targets): private
    # ranges only when allowed; networks allowed or refused whatever the
    # default says (comma-separated, e.g. 127.0.0.1/32; deny wins).
    webhook_allow_private: Bool = False
    webhook_allow: Networks = ""
    webhook_deny: Networks = ""
    # Seconds an operation waits for a free slot of its board's power
    # controller (a PDU, a relay bank) before trying again later.
    power_controller_wait: PositiveFloat = 60.0
    # Boot resources: where imports publish, and (when set) where the PXE
    # configuration of a reimaged board is written from them.
    bootres_storage: str = "./var/boot-resources"
    pxe_root: str = ""
    # The address boards use to reach Corral's HTTP server (callbacks, iPXE
    # scripts, boot objects), e.g. http://10.0.0.1:8080; needed with pxe_root.
    boot_callback_url: str = ""
    # Who may fetch /boot/* (iPXE scripts, which carry reimage tokens, and boot
    # objects): comma-separated networks, e.g. 10.0.0.0/24; empty: anyone.
    boot_networks: Networks = ""
    # Switching a board to local boot when no backend can (command backend).
    command_boot_local: Template = ""
    # Jobs: how often the scheduler gives free pools to queued jobs (seconds).
    job_dispatch_interval: PositiveFloat = 1.0
    # Maintenance Orchestrator (gRPC)
    mo_target: HostPort = "127.0.0.1:50051"
    mo_deadline: PositiveFloat = 5.0
    mo_attempts: PositiveInt = 5
    # How long an override lasts at MO unless renewed (seconds; 12 h).
    mo_override_ttl: PositiveInt = 43200
    # Leases (docs/leases.md). How often the lease scheduler runs its pass
    # (it also runs at once when a lease asks or ends); a lease's duration when
    # it names none, and the longest one request or renewal may ask for; how
    # long a lease may last in all, renewals included; the longest a request
    # may wait in the queue (its wait timeout when it gives none).
    lease_interval: PositiveFloat = 2.0
    lease_default_duration: PositiveInt = 3600
    lease_max_duration: PositiveInt = 86400
    lease_max_total: PositiveInt = 259200
    lease_max_wait: PositiveInt = 86400
    # Quotas per owner: boards held at once, leases queued at once.
    lease_quota_boards: PositiveInt = 20
    lease_quota_queued: PositiveInt = 100
    # Fair share: board-time each share (a project, else an owner) used over
    # this window ranks its queued leases within their priority class; every
    # second a lease waits cancels `lease_wait_boost` board-seconds of use, so
    # nothing waits for ever.
    lease_share_window: PositiveInt = 86400
    lease_wait_boost: PositiveFloat = 1.0
    # A lease that has waited this long keeps the boards it could use from
    # leases ranked below it, so that a large request is not starved by small ones.
    lease_reserve_after: PositiveInt = 300
    lease_reserve_for: PositiveInt = 600
    # What a returned board is reimaged to (empty: its inventory release).
    lease_baseline_release: str = ""
    # The warning event this long before a lease expires (seconds).
    lease_expiry_warning: PositiveInt = 300
    # Health checks (docs/health.md). How often the health pass runs; the
    # window in which failures are counted together, and how many boards
    # failing through one piece of equipment (a power controller, the
    # netboot server) in it make the equipment degraded, how many other
    # boards failing with one image blame the image; the first wait before
    # a degraded controller's canary is checked again, doubled after each
    # probe up to the maximum; how many health checks one process runs at
    # once (each holds a thread while its steps run).
    health_interval: PositiveFloat = 2.0
    health_window: PositiveInt = 600
    health_equipment_threshold: PositiveInt = 3
    health_image_threshold: PositiveInt = 2
    health_backoff: PositiveInt = 60
    health_backoff_max: PositiveInt = 3600
    health_threads: PositiveInt = 8

    # Console capture (docs/console-capture.md): what each board keeps of its
    # serial console (bytes, all attempts together; a board's console.max_bytes
    # overrides it), how often a worker renews its claims and takes boards'
    # consoles nobody captures, how long a claim lasts unless renewed (a dead
    # process's boards are taken over after this), the most boards one
    # process captures (a thread each), and the board states whose entry
    # begins a boot attempt (comma-separated).
    console_max_bytes: PositiveInt = 1048576
    console_interval: PositiveFloat = 2.0
    console_lease: PositiveFloat = 30.0
    console_max_boards: PositiveInt = 200
    console_boot_states: str = "power_cycling,pxe_power_cycling,checking"
    # Simulated lab
    sim_seed: Count = 0
    sim_operation_seconds: Seconds = 0.2
    sim_power_cycle_failure: Probability = 0.02
    sim_ping_failure: Probability = 0.1
    sim_poll_failure: Probability = 0.05
    sim_boot_seconds: Seconds = 8.0
    sim_install_seconds: Seconds = 15.0
    sim_install_failure: Probability = 0.1
    sim_reimage_rate: Probability = 0.02
    sim_dead_boards: str = ""
    # A simulated controller outage: "relay-2@120+180" (relay-2's boards'
    # power commands fail from 120 s after start, for 180 s); empty: none.
    sim_controller_outage: Annotated[
        str, Field(pattern=r"^(|[A-Za-z0-9._:-]+@[0-9]+\+[0-9]+)$")] = ""

    @property
    def owner(self) -> str:
        return self.worker_id or f"{socket.gethostname()}:{os.getpid()}"


SETTINGS: tuple[str, ...] = tuple(Settings.model_fields)


def parse_networks(value: str, origin: str = "the configuration",
                   name: str = "boot_networks") -> list[Any]:
    """``10.0.0.0/24, fd00::/64`` as address networks (empty: none).

    Raises:
        ConfigError: one of them is not a network.
    """
    wrong = _not_a_network(value)
    if wrong is not None:
        raise ConfigError(f"{name} (from {origin}): {wrong!r} is not a network "
                          "such as 10.0.0.0/24")
    return [ipaddress.ip_network(part, strict=False) for part in _parts(value)]


def _parts(value: str) -> list[str]:
    return [part for part in (p.strip() for p in value.split(",")) if part]


def _not_a_network(value: str) -> str | None:
    for part in _parts(value):
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            return part
    return None


def parse_listen(value: str, origin: str = "listen", name: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port).

    Raises:
        ConfigError: not of that form, or the port is out of range.
    """
    address = _split_host_port(value)
    if address is None:
        raise ConfigError(f"{name} (from {origin}) must be HOST:PORT, e.g. 127.0.0.1:8080, "
                          f"not {value!r}")
    return address


def _split_host_port(value: str) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def load_settings(
    config_file: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from file, environment and explicit overrides.

    Raises:
        ConfigError: an unreadable file, an unknown key or a bad value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or env.get("CORRAL_CONFIG")
    if path is None and Path("corral.toml").is_file():
        path = "corral.toml"
    if path:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for key in document:
            if key not in SETTINGS:
                raise ConfigError(f"{path}: unknown setting {key!r}; settings: "
                                  f"{', '.join(SETTINGS)}")
        values |= _checked(document, lambda _: str(path))
    variables = {name: env[_variable(name)] for name in SETTINGS if _variable(name) in env}
    values |= _checked(variables, _variable)
    given = {name: raw for name, raw in (overrides or {}).items() if raw is not None}
    values |= _checked(given, lambda _: "the command line")
    return Settings(**values)


def _variable(name: str) -> str:
    return f"CORRAL_{name.upper()}"


def _checked(raw: Mapping[str, Any], origin: Callable[[str], str]) -> dict[str, Any]:
    """The settings of one source, each checked by its field of :class:`Settings`.

    Raises:
        ConfigError: every bad value, each with its setting and where it came from.
    """
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_problem(detail, raw, origin)
                                    for detail in exc.errors(include_url=False))) from None
    return {name: getattr(settings, name) for name in raw}


_WORDS = {
    "int_type": "must be a whole number", "float_type": "must be a number",
    "string_type": "must be a string", "greater_than": "must be greater than 0",
    "greater_than_equal": "must not be negative",
}


def _problem(detail: Any, raw: Mapping[str, Any], origin: Callable[[str], str]) -> str:
    """One bad value in the words of a setting: ``sweep_batch (from
    CORRAL_SWEEP_BATCH) must be a whole number, not 'lots'``."""
    name = str(detail["loc"][0])
    where = f"{name} (from {origin(name)})"
    kind = detail["type"]
    if kind == "literal_error":
        choices = get_args(Settings.model_fields[name].annotation)
        return f"{where} must be one of {', '.join(choices)}, not {raw[name]!r}"
    if kind == "corral" and detail["msg"].startswith("holds"):
        return f"{where} {detail['msg']}"
    words = _WORDS.get(kind, detail["msg"])
    return f"{where} {words}, not {raw[name]!r}"

"""Configuration: one TOML file, every setting also a ``CORRAL_<NAME>`` variable.

Precedence, lowest first: built-in defaults, the file (``--config`` /
``CORRAL_CONFIG``, else ``./corral.toml`` if present), environment variables,
command-line options. Every setting is listed in ``docs/configuration.md``; a
test keeps that page and :data:`SETTINGS` in step. A bad value stops start-up
with the setting's name, where it came from and what is allowed.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from corral.errors import ConfigError
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import DEFAULT_DATABASE_URL

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
BACKENDS = ("simulated", "command")


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    statemachines_dir: str = str(DEFAULT_STATEMACHINES_DIR)
    log_level: str = "info"
    log_format: str = "auto"
    # HTTP
    listen: str = "127.0.0.1:8080"
    http_threads: int = 64
    # Seconds a client has to send a request's headers, then its body; slower
    # ones get 408 and are disconnected (they would hold a connection for ever).
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    # API processes sharing the listen address (SO_REUSEPORT); about one core each.
    http_processes: int = 1
    token_cache_seconds: float = 2.0
    # How long a callback's Idempotency-Key is remembered (hours; 0: forever).
    idempotency_key_hours: float = 24.0
    # Retention (days; 0: keep everything): history rows (each machine keeps
    # its newest) and finished operations older than this are deleted.
    history_retention_days: float = 0.0
    operation_retention_days: float = 0.0
    # Sweeps
    sweep_interval: float = 1.0
    sweep_batch: int = 1000
    sweep_threads: int = 2
    # Seconds between recounts of machines per state (the /metrics gauges).
    state_count_interval: float = 10.0
    timeout_scale: float = 1.0
    # Group commit: concurrent events in one process share transactions
    # (0 turns it off: one transaction per event).
    group_commit_threads: int = 2
    group_commit_max_batch: int = 64
    # Operations
    backend: str = "command"
    operation_interval: float = 0.5
    operation_threads: int = 8
    operation_lease: float = 120.0
    operation_max_attempts: int = 5
    operation_retry_delay: float = 5.0
    command_timeout: float = 60.0
    command_power_cycle: str = ""
    command_power_on: str = ""
    command_power_off: str = ""
    command_set_boot_device: str = ""
    command_ping: str = "ping -c 1 -W 2 {hostname}"
    command_poll: str = "ping -c 1 -W 2 {hostname}"
    command_write_pxe_config: str = ""
    worker_id: str = ""
    # The event stream: a comment every events_heartbeat seconds of silence;
    # the horizon looked at every events_interval seconds (PostgreSQL's
    # notifications move it at once).
    events_heartbeat: float = 15.0
    events_interval: float = 0.5
    # Webhook delivery (worker processes): how often subscriptions are looked
    # at, a POST's timeout, how long a process holds a subscription, failures
    # in a row before it is marked failing, and the longest wait between tries.
    webhook_interval: float = 0.5
    webhook_timeout: float = 10.0
    webhook_lease: float = 60.0
    webhook_failing_after: int = 5
    webhook_max_backoff: float = 300.0
    # Seconds an operation waits for a free slot of its board's power
    # controller (a PDU, a relay bank) before trying again later.
    power_controller_wait: float = 60.0
    # Boot resources: where imports publish, and (when set) where the PXE
    # configuration of a reimaged board is written from them.
    bootres_storage: str = "./var/boot-resources"
    pxe_root: str = ""
    # The address boards use to reach Corral's HTTP server (callbacks, iPXE
    # scripts, boot objects), e.g. http://10.0.0.1:8080; needed with pxe_root.
    boot_callback_url: str = ""
    # Who may fetch /boot/* (iPXE scripts, which carry reimage tokens, and boot
    # objects): comma-separated networks, e.g. 10.0.0.0/24; empty: anyone.
    boot_networks: str = ""
    # Switching a board to local boot when no backend can (command backend).
    command_boot_local: str = ""
    # Jobs: how often the scheduler gives free pools to queued jobs (seconds).
    job_dispatch_interval: float = 1.0
    # Maintenance Orchestrator (gRPC)
    mo_target: str = "127.0.0.1:50051"
    mo_deadline: float = 5.0
    mo_attempts: int = 5
    # How long an override lasts at MO unless renewed (seconds; 12 h).
    mo_override_ttl: int = 43200
    # Simulated lab
    sim_seed: int = 0
    sim_operation_seconds: float = 0.2
    sim_power_cycle_failure: float = 0.02
    sim_ping_failure: float = 0.1
    sim_poll_failure: float = 0.05
    sim_boot_seconds: float = 8.0
    sim_install_seconds: float = 15.0
    sim_install_failure: float = 0.1
    sim_reimage_rate: float = 0.02
    sim_dead_boards: str = ""

    @property
    def owner(self) -> str:
        return self.worker_id or f"{socket.gethostname()}:{os.getpid()}"


SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(Settings))

_POSITIVE = {"http_threads", "http_processes", "http_header_timeout", "http_body_timeout",
             "sweep_interval", "sweep_batch", "sweep_threads", "state_count_interval",
             "group_commit_max_batch",
             "timeout_scale", "operation_interval", "operation_threads", "operation_lease",
             "operation_max_attempts", "command_timeout", "power_controller_wait", "mo_deadline",
             "events_heartbeat", "events_interval", "webhook_interval", "webhook_timeout",
             "webhook_lease", "webhook_failing_after", "webhook_max_backoff",
             "mo_attempts",
             "mo_override_ttl", "job_dispatch_interval"}
_NON_NEGATIVE = {"token_cache_seconds", "idempotency_key_hours", "history_retention_days",
                 "operation_retention_days", "group_commit_threads",
                 "operation_retry_delay", "sim_operation_seconds",
                 "sim_boot_seconds", "sim_install_seconds", "sim_seed"}
_PROBABILITIES = {"sim_power_cycle_failure", "sim_ping_failure", "sim_poll_failure",
                  "sim_install_failure", "sim_reimage_rate"}
_CHOICES = {"log_level": LOG_LEVELS, "log_format": LOG_FORMATS, "backend": BACKENDS}


def _coerce(name: str, raw: Any, origin: str) -> Any:
    field_type = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if field_type == "int":
            if isinstance(raw, bool):
                raise ValueError
            value: Any = int(raw) if isinstance(raw, int | str) else _bad()
        elif field_type == "float":
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw) if isinstance(raw, int | float | str) else _bad()
        else:
            value = raw if isinstance(raw, str) else _bad()
    except ValueError:
        kind = {"int": "a whole number", "float": "a number"}.get(str(field_type), "a string")
        raise ConfigError(f"{name} (from {origin}) must be {kind}, not {raw!r}") from None
    if name in _POSITIVE and not value > 0:
        raise ConfigError(f"{name} (from {origin}) must be greater than 0, not {raw!r}")
    if name in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"{name} (from {origin}) must not be negative, not {raw!r}")
    if name in _PROBABILITIES and not 0 <= value <= 1:
        raise ConfigError(f"{name} (from {origin}) must be between 0 and 1, not {raw!r}")
    if name in ("listen", "mo_target"):
        parse_listen(value, origin, name)
    if name == "boot_networks":
        parse_networks(value, origin)
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(f"{name} (from {origin}) must be one of "
                          f"{', '.join(_CHOICES[name])}, not {raw!r}")
    return value


def parse_networks(value: str, origin: str = "boot_networks") -> list[Any]:
    """``10.0.0.0/24, fd00::/64`` as address networks (empty: none).

    Raises:
        ConfigError: one of them is not a network.
    """
    import ipaddress

    networks = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"boot_networks (from {origin}): {part!r} is not a network "
                              "such as 10.0.0.0/24") from None
    return networks


def parse_listen(value: str, origin: str = "listen", name: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port).

    Raises:
        ConfigError: not of that form, or the port is out of range.
    """
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} (from {origin}) must be HOST:PORT, e.g. 127.0.0.1:8080, "
                          f"not {value!r}")
    return host, int(port)


def _bad() -> Any:
    raise ValueError


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
        for key, raw in document.items():
            if key not in SETTINGS:
                raise ConfigError(f"{path}: unknown setting {key!r}; settings: "
                                  f"{', '.join(SETTINGS)}")
            values[key] = _coerce(key, raw, path)
    for name in SETTINGS:
        variable = f"CORRAL_{name.upper()}"
        if variable in env:
            values[name] = _coerce(name, env[variable], variable)
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(name, raw, "the command line")
    return Settings(**values)

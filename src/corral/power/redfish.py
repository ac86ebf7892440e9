"""Power and boot device over Redfish, through ``sushy`` (the library Ironic uses).

```yaml
power: {driver: redfish, address: "https://bmc-7.lab", system: "1",
        username: corral, password_env: BMC7_PASSWORD, verify_tls: true}
```

``system`` is a system id (``1``, a UUID) or a path under
``/redfish/v1/Systems``; without it the BMC must have exactly one system.
A power cycle is ``ForceRestart``; a BMC that does not offer it gets
``PowerCycle``, else ``ForceOff`` then ``On``. The next boot is set with
``BootSourceOverrideTarget: Pxe`` and ``BootSourceOverrideEnabled: Once``
(``Continuous`` when asked to persist), in ``boot_mode`` (``bios`` or
``uefi``) when the board names one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from corral.power.base import (
    OFF,
    ON,
    UNKNOWN,
    PowerFailed,
    PowerTarget,
    PowerUnavailable,
)
from corral.power.settings import PowerSettings, Text, timeout_of
from corral.validation import refuse

SYSTEMS = "/redfish/v1/Systems"


class RedfishSettings(PowerSettings):
    SECRETS: ClassVar[tuple[str, ...]] = ("password",)

    driver: Literal["redfish"]
    address: str
    system: str | None = None
    username: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    boot_mode: Literal["bios", "uefi"] | None = None
    set_boot_device: bool = True
    password: Text | None = None
    password_file: Text | None = None
    password_env: Text | None = None

    @field_validator("address")
    @classmethod
    def _a_url(cls, address: str) -> str:
        if not address.startswith(("http://", "https://")):
            raise refuse("a Redfish address is a URL: https://bmc-7.lab")
        return address


class RedfishDriver:
    Settings: ClassVar[type[PowerSettings]] = RedfishSettings
    reports_state: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("sushy",)

    def power_cycle(self, target: PowerTarget) -> Mapping[str, Any]:
        import sushy

        with _system(target) as system:
            allowed = _allowed_resets(system)
            if system.power_state == sushy.PowerState.OFF:
                # What a cycle means to a board that is off (a restart of an
                # off system is refused by many BMCs).
                on = (sushy.ResetType.ON if allowed is None or sushy.ResetType.ON in allowed
                      else sushy.ResetType.FORCE_ON)
                _reset(target, system, on)
                return {"asked": on.value, "was": OFF}
            for reset in (sushy.ResetType.FORCE_RESTART, sushy.ResetType.POWER_CYCLE):
                if allowed is None or reset in allowed:
                    _reset(target, system, reset)
                    return {"asked": reset.value}
            if sushy.ResetType.FORCE_OFF in allowed and (
                    sushy.ResetType.ON in allowed or sushy.ResetType.FORCE_ON in allowed):
                _reset(target, system, sushy.ResetType.FORCE_OFF)
                on = (sushy.ResetType.ON if sushy.ResetType.ON in allowed
                      else sushy.ResetType.FORCE_ON)
                _reset(target, system, on)
                return {"asked": f"{sushy.ResetType.FORCE_OFF.value}, {on.value}"}
            raise PowerFailed(f"{_where(target)} offers no way to restart the system "
                              f"(it allows: {_names(allowed)})")

    def power_on(self, target: PowerTarget) -> Mapping[str, Any]:
        import sushy

        with _system(target) as system:
            if system.power_state == sushy.PowerState.ON:
                return {"asked": "nothing", "was": ON}  # a retry after it took effect
            allowed = _allowed_resets(system)
            on = (sushy.ResetType.ON if allowed is None or sushy.ResetType.ON in allowed
                  else sushy.ResetType.FORCE_ON)
            _reset(target, system, on)
            return {"asked": on.value}

    def power_off(self, target: PowerTarget) -> Mapping[str, Any]:
        import sushy

        with _system(target) as system:
            if system.power_state == sushy.PowerState.OFF:
                return {"asked": "nothing", "was": OFF}  # a retry after it took effect
            _reset(target, system, sushy.ResetType.FORCE_OFF)
            return {"asked": sushy.ResetType.FORCE_OFF.value}

    def power_state(self, target: PowerTarget) -> str:
        import sushy

        with _system(target) as system:
            state = system.power_state
            if state == sushy.PowerState.ON:
                return ON
            if state == sushy.PowerState.OFF:
                return OFF
            return UNKNOWN

    def set_boot_device(self, target: PowerTarget, device: str, *, persistent: bool
                        ) -> Mapping[str, Any]:
        import sushy

        source = sushy.BootSource.PXE if device == "network" else sushy.BootSource.HDD
        enabled = (sushy.BootSourceOverrideEnabled.CONTINUOUS if persistent
                   else sushy.BootSourceOverrideEnabled.ONCE)
        mode = {"uefi": sushy.BootSourceOverrideMode.UEFI,
                "bios": sushy.BootSourceOverrideMode.LEGACY}.get(
                    str(target.settings.get("boot_mode")))
        with _system(target) as system:
            with _answers(target, "setting the boot device"):
                system.set_system_boot_options(source, enabled=enabled, mode=mode)
        return {"asked": {"BootSourceOverrideTarget": source.value,
                          "BootSourceOverrideEnabled": enabled.value,
                          **({"BootSourceOverrideMode": mode.value} if mode else {})}}


def _where(target: PowerTarget) -> str:
    return f"Redfish BMC {target.settings.get('address')}"


def _names(allowed: Any) -> str:
    return ", ".join(sorted(a.value for a in allowed)) or "nothing"


def _allowed_resets(system: Any) -> Any:
    """The reset types the BMC offers, or None when it does not say (then
    the standard ones are tried)."""
    try:
        allowed = system.get_allowed_reset_system_values()
    except Exception:
        return None
    return allowed or None


def _reset(target: PowerTarget, system: Any, reset: Any) -> None:
    with _answers(target, f"reset {reset.value}"):
        system.reset_system(reset)


@contextmanager
def _system(target: PowerTarget) -> Iterator[Any]:
    """The board's system resource, on a connection that lives for one operation."""
    import sushy

    settings = target.settings
    address = str(settings["address"]).rstrip("/")
    verify: bool | str = bool(settings.get("verify_tls", True))
    if verify and isinstance(settings.get("ca_file"), str):
        verify = str(settings["ca_file"])
    timeout = timeout_of(settings)
    if not address.startswith(("http://", "https://")):
        raise PowerFailed(f"{_where(target)}: address must be an http:// or https:// URL")
    # A Redfish session when the BMC offers them, else basic authentication;
    # the session is deleted when the operation ends, so that polling the
    # power state never fills the BMC's session table.
    auth = sushy.auth.SessionOrBasicAuth(username=settings.get("username"),
                                         password=target.secret("password"))
    try:
        with _answers(target, "connecting"):
            conn = sushy.Sushy(
                address, verify=verify, auth=auth,
                # One attempt per operation: the outbox retries with backoff and
                # the state's timeout bounds the whole, so sushy's own 10 x 3 s
                # is off.
                server_side_retries=0, read_timeout=timeout, connect_timeout=timeout)
            system_id = settings.get("system")
            if system_id is None:
                members = conn.get_system_collection().members_identities
                if len(members) != 1:
                    raise PowerFailed(f"{_where(target)} has {len(members)} systems "
                                      f"({', '.join(sorted(members))}): name one with "
                                      "system:")
                path = next(iter(members))
            else:
                path = str(system_id)
                path = path if path.startswith("/") else f"{SYSTEMS}/{path}"
            system = conn.get_system(path)
        yield system
    finally:
        _close(auth)


def _close(auth: Any) -> None:
    try:
        auth.close()
    except Exception:  # a session that cannot be deleted expires on the BMC
        pass


@contextmanager
def _answers(target: PowerTarget, doing: str) -> Iterator[None]:
    """Classify what sushy raised: refusals are definite, silence is transient."""
    import requests
    import sushy.exceptions as sx

    where = _where(target)
    started = time.monotonic()
    try:
        yield
    except PowerFailed:
        raise
    except sx.AccessError as exc:
        raise PowerFailed(f"{where} refused the credentials ({_status(exc)}) when "
                          f"{doing}") from None
    except (sx.MissingActionError, sx.InvalidParameterValueError) as exc:
        raise PowerFailed(f"{where} does not support {doing}: {_message(exc)}") from None
    except sx.ResourceNotFoundError:
        raise PowerFailed(f"{where} has no system {target.settings.get('system')!r} "
                          f"(under {SYSTEMS})") from None
    except sx.BadRequestError as exc:
        raise PowerFailed(f"{where} refused {doing}: {_message(exc)}") from None
    except sx.ServerSideError as exc:
        raise PowerUnavailable(f"{where} failed {doing} ({_status(exc)}): "
                               f"{_message(exc)}") from None
    except (sx.ConnectionError, requests.RequestException) as exc:
        if _cause(exc) in ("certificate verify failed", "certificate_verify_failed"):
            raise PowerFailed(f"{where}: its TLS certificate does not verify (set ca_file, "
                              "or verify_tls: false for a lab BMC)") from None
        elapsed = time.monotonic() - started
        raise PowerUnavailable(f"{where} did not answer {doing} "
                               f"({_cause(exc)}, after {elapsed:.1f} s)") from None
    except sx.HTTPError as exc:
        if getattr(exc, "status_code", None) in (409, 429):
            # Busy with another request (a reset in progress), or rate limited.
            raise PowerUnavailable(f"{where} is busy ({_status(exc)}) when {doing}: "
                                   f"{_message(exc)}") from None
        raise PowerFailed(f"{where} refused {doing} ({_status(exc)}): {_message(exc)}") from None
    except sx.SushyError as exc:
        raise PowerFailed(f"{where}: {doing}: {_message(exc)}") from None


def _status(exc: Any) -> str:
    return f"HTTP {getattr(exc, 'status_code', '?')}"


def _message(exc: Any) -> str:
    # sushy's HTTPError carries the BMC's own extended message; its str()
    # also holds the URL, which is fine, but never a request body.
    text = getattr(exc, "detail", None) or str(exc)
    return str(text)[:500]


def _cause(exc: BaseException) -> str:
    text = str(exc)
    for word in ("timed out", "Read timed out", "Connection refused", "Name or service",
                 "No route", "certificate verify failed", "CERTIFICATE_VERIFY_FAILED"):
        if word.lower() in text.lower():
            return word.lower()
    return type(exc).__name__

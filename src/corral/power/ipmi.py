"""Power and boot device over IPMI 2.0 LAN (lanplus), through ``pyghmi``.

```yaml
power: {driver: ipmi, address: 10.0.7.21, username: ADMIN, password_file: /etc/corral/ipmi}
```

A power cycle is ``chassis power cycle`` when the chassis is on (a board that
is off is powered on instead, which is what a cycle means to it), falling back
to ``off`` then ``on`` for a BMC that refuses the cycle command. The next boot
is ``chassis bootdev pxe``, once unless asked to persist, with the EFI flag
when the board's ``boot_mode`` is ``uefi``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from corral.power.base import (
    OFF,
    ON,
    UNKNOWN,
    PowerFailed,
    PowerTarget,
    PowerUnavailable,
    SettingsSpec,
)

T = TypeVar("T")
CHASSIS_CONTROL = 2  # netfn chassis, command "chassis control"
POWER_CYCLE = 2
# Words in pyghmi's messages that mean the BMC refused who we are.
_REFUSALS = ("password", "unauthorized", "unknown user", "privilege", "rakp", "authenticat",
             "insufficient", "invalid user")


class IpmiDriver:
    SPEC: ClassVar[SettingsSpec] = SettingsSpec(
        required=("address",),
        optional=("port", "username", "boot_mode"),
        secrets=("password",),
        choices={"boot_mode": ("bios", "uefi")},
        integers=("port",),
    )
    reports_state: ClassVar[bool] = True

    def power_cycle(self, target: PowerTarget) -> Mapping[str, Any]:
        def cycle(command: Any) -> Mapping[str, Any]:
            if _state(command) == OFF:
                _check(command.set_power("on"))
                return {"asked": "chassis power on", "was": OFF}
            answer = command.raw_command(netfn=0, command=CHASSIS_CONTROL, data=[POWER_CYCLE])
            if "error" not in answer:
                return {"asked": "chassis power cycle"}
            # Some BMCs refuse "cycle" (it is optional in the specification).
            _check(command.set_power("off", wait=10))
            _check(command.set_power("on"))
            return {"asked": "chassis power off, on",
                    "cycle_refused": str(answer.get("error"))[:200]}

        return _session(target, "power cycle", cycle)

    def power_on(self, target: PowerTarget) -> Mapping[str, Any]:
        return _session(target, "power on", lambda c: _switch(c, "on"))

    def power_off(self, target: PowerTarget) -> Mapping[str, Any]:
        return _session(target, "power off", lambda c: _switch(c, "off"))

    def power_state(self, target: PowerTarget) -> str:
        return _session(target, "power status", _state)

    def set_boot_device(self, target: PowerTarget, device: str, *, persistent: bool
                        ) -> Mapping[str, Any]:
        bootdev = "network" if device == "network" else "hd"
        uefi = target.settings.get("boot_mode") == "uefi"

        def set_bootdev(command: Any) -> Mapping[str, Any]:
            _check(command.set_bootdev(bootdev, persist=persistent, uefiboot=uefi))
            return {"asked": f"chassis bootdev {'pxe' if bootdev == 'network' else 'disk'}"
                    + (" options=efiboot" if uefi else "")
                    + (" options=persistent" if persistent else "")}

        return _session(target, "chassis bootdev", set_bootdev)


def _switch(command: Any, to: str) -> Mapping[str, Any]:
    _check(command.set_power(to))
    return {"asked": f"chassis power {to}"}


def _state(command: Any) -> str:
    answer = command.get_power()
    _check(answer)
    state = answer.get("powerstate")
    return ON if state == "on" else OFF if state == "off" else UNKNOWN


def _check(answer: Any) -> None:
    if isinstance(answer, dict) and "error" in answer:
        from pyghmi.exceptions import IpmiException

        raise IpmiException(str(answer["error"]))


def _session(target: PowerTarget, doing: str, work: Callable[[Any], T]) -> T:
    """Run ``work`` on a session with the board's BMC, classifying what fails."""
    from pyghmi.exceptions import IpmiException, PyghmiException
    from pyghmi.ipmi import command as ipmi_command

    settings = target.settings
    where = f"IPMI BMC {settings['address']}:{settings.get('port', 623)}"
    password = target.secret("password") or ""
    started = time.monotonic()
    # pyghmi runs every session of the process on its own I/O thread, so
    # commands to different BMCs may come from different worker threads.
    try:
        command = ipmi_command.Command(
            bmc=str(settings["address"]), userid=str(settings.get("username") or ""),
            password=password, port=int(settings.get("port", 623)), keepalive=False)
        try:
            return work(command)
        finally:
            _logout(command)
    except PowerFailed:
        raise
    except (IpmiException, PyghmiException, OSError) as exc:
        text = str(exc)
        elapsed = time.monotonic() - started
        if any(word in text.lower() for word in _REFUSALS):
            raise PowerFailed(f"{where} refused the credentials when asked for {doing}: "
                              f"{_safe(text, password)}") from None
        if "timeout" in text.lower() or "no longer connected" in text.lower() \
                or isinstance(exc, OSError):
            raise PowerUnavailable(f"{where} did not answer {doing} (after "
                                   f"{elapsed:.1f} s)") from None
        raise PowerFailed(f"{where} refused {doing}: {_safe(text, password)}") from None


def _logout(command: Any) -> None:
    try:
        command.ipmi_session.logout()
    except Exception:  # the BMC drops an idle session by itself
        pass


def _safe(text: str, password: str) -> str:
    """The BMC's message, cut short, with the password removed should a
    library ever echo it."""
    text = text[:300]
    return text.replace(password, "(hidden)") if password else text

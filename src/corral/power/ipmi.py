"""Power and boot device over IPMI 2.0 LAN (lanplus), through ``ipmitool``.

```yaml
power: {driver: ipmi, address: 10.0.7.21, username: ADMIN, password_file: /etc/corral/ipmi}
```

A power cycle is ``chassis power cycle`` when the chassis is on (a board that
is off is powered on instead, which is what a cycle means to it), falling back
to ``off`` then ``on`` for a BMC that refuses the cycle command (it is
optional in the specification). The next boot is ``chassis bootdev pxe``, once
unless asked to persist, with ``options=efiboot`` when the board's
``boot_mode`` is ``uefi``.

ipmitool is what Ironic's and MAAS's IPMI drivers run; the password reaches it
in its environment (``-E``), never on its command line where ``ps`` would
show it. It runs with ``-v`` so that its account of a failed session tells a
refused password (definite) from a BMC that does not answer (transient).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from corral.power.base import (
    OFF,
    ON,
    UNKNOWN,
    PowerFailed,
    PowerTarget,
    PowerUnavailable,
)
from corral.power.settings import Port, PowerSettings, Text, timeout_of

# What ipmitool -v says when the BMC refused who we are.
_REFUSALS = ("rakp 2 hmac is invalid", "unauthorized name", "invalid authentication",
             "insufficient privilege", "unauthorized role", "invalid role", "invalid user",
             "rakp 4 message has invalid integrity")
# ... and when it heard nothing back.
_SILENCE = ("get auth capabilities error", "no response from remote controller",
            "insufficient resources for session", "unable to send", "timeout",
            "node busy", "busy")
_STATE = re.compile(r"Chassis Power is (on|off)")


class IpmiSettings(PowerSettings):
    SECRETS: ClassVar[tuple[str, ...]] = ("password",)

    driver: Literal["ipmi"]
    address: str
    port: Port = 623
    username: str | None = None
    boot_mode: Literal["bios", "uefi"] | None = None
    cipher_suite: Port = 3
    set_boot_device: bool = True
    password: Text | None = None
    password_file: Text | None = None
    password_env: Text | None = None


class IpmiDriver:
    Settings: ClassVar[type[PowerSettings]] = IpmiSettings
    reports_state: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()

    def power_cycle(self, target: PowerTarget) -> Mapping[str, Any]:
        if self.power_state(target) == OFF:
            _ipmitool(target, "chassis", "power", "on")
            return {"asked": "chassis power on", "was": OFF}
        try:
            _ipmitool(target, "chassis", "power", "cycle")
        except PowerFailed as refused:
            _ipmitool(target, "chassis", "power", "off")
            _ipmitool(target, "chassis", "power", "on")
            return {"asked": "chassis power off, on", "cycle_refused": refused.reason[-200:]}
        return {"asked": "chassis power cycle"}

    def power_on(self, target: PowerTarget) -> Mapping[str, Any]:
        _ipmitool(target, "chassis", "power", "on")
        return {"asked": "chassis power on"}

    def power_off(self, target: PowerTarget) -> Mapping[str, Any]:
        _ipmitool(target, "chassis", "power", "off")
        return {"asked": "chassis power off"}

    def power_state(self, target: PowerTarget) -> str:
        found = _STATE.search(_ipmitool(target, "chassis", "power", "status"))
        return (ON if found.group(1) == "on" else OFF) if found else UNKNOWN

    def set_boot_device(self, target: PowerTarget, device: str, *, persistent: bool
                        ) -> Mapping[str, Any]:
        options = [o for o, wanted in (("efiboot", target.settings.get("boot_mode") == "uefi"),
                                       ("persistent", persistent)) if wanted]
        args = ["chassis", "bootdev", "pxe" if device == "network" else "disk"]
        if options:
            args.append(f"options={','.join(options)}")
        _ipmitool(target, *args)
        return {"asked": " ".join(args)}


def _ipmitool(target: PowerTarget, *command: str) -> str:
    """Run one ipmitool command against the board's BMC; its standard output.

    Raises:
        PowerFailed: the BMC refused (credentials, an unsupported command).
        PowerUnavailable: it did not answer within the board's timeout.
    """
    settings = target.settings
    where = f"IPMI BMC {settings['address']}:{settings.get('port', 623)}"
    binary = shutil.which("ipmitool")
    if binary is None:
        raise PowerFailed("ipmitool is not installed on this engine's host (Debian: "
                          "apt-get install ipmitool)")
    timeout = timeout_of(settings)
    argv = [binary, "-v", "-I", "lanplus", "-H", str(settings["address"]),
            "-p", str(settings.get("port", 623)), "-U", str(settings.get("username") or ""),
            # One explicit cipher suite (3: SHA1 and AES, which every lanplus
            # BMC has) spares a round of cipher-suite discovery per command.
            "-C", str(settings.get("cipher_suite", 3)),
            "-N", "1", "-R", "2", "-E", *command]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "IPMI_PASSWORD": target.secret("password") or ""}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise PowerUnavailable(f"{where} did not answer {' '.join(command)} within "
                               f"{timeout:g} s") from None
    if done.returncode == 0:
        return done.stdout
    said = (done.stderr + done.stdout).lower()
    message = _last_error(done.stderr + done.stdout)
    if any(word in said for word in _REFUSALS):
        raise PowerFailed(f"{where} refused the credentials for {' '.join(command)}: "
                          f"{message}")
    if any(word in said for word in _SILENCE):
        raise PowerUnavailable(f"{where} did not answer {' '.join(command)}: {message}")
    raise PowerFailed(f"{where} refused {' '.join(command)}: {message}")


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines()
             if line.strip() and not line.startswith(("Loading IANA", ">> ", "Running Get"))]
    return " / ".join(lines[-2:])[-300:] or "no message"

"""Outlet power on switched PDUs over SNMP (v1, v2c or v3), through ``pysnmp``.

```yaml
power: {driver: snmp, pdu: apc_rackpdu, address: pdu-3.lab, outlet: 7,
        community_file: /etc/corral/pdu-3.community}
```

Each PDU type is a row of :data:`PDUS`: where an outlet's state is read, where
its command is written, and the values that mean on and off, from the vendors'
MIBs (the same tables Ironic's snmp driver uses). A cycle is off, a pause of
``cycle_delay`` seconds (the PSU's capacitors drain), then on: every PDU can
do that, and it is what an operator does by hand. A PDU has no notion of a
boot device, so ``set_boot_device`` reports that it had nothing to do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import ValidationInfo, field_validator

from corral.power.base import (
    OFF,
    ON,
    UNKNOWN,
    PowerFailed,
    PowerTarget,
    PowerUnavailable,
)
from corral.power.settings import Port, PowerSettings, Seconds, Text, secret_forms, timeout_of
from corral.validation import refuse

ENTERPRISES = "1.3.6.1.4.1"


@dataclass(frozen=True, kw_only=True)
class PduType:
    description: str
    # OIDs with {outlet} (and {unit}: the PDU in a daisy chain, the tower).
    state_oid: str
    command_oid: str
    state_on: tuple[int, ...]
    state_off: tuple[int, ...]
    command_on: int
    command_off: int


PDUS: dict[str, PduType] = {
    # PowerNet-MIB rPDUOutletControlOutletCommand: reads back the outlet's
    # state as immediateOn(1) / immediateOff(2).
    "apc_rackpdu": PduType(
        description="APC Rack PDU (AP7xxx, AP8xxx)",
        state_oid=f"{ENTERPRISES}.318.1.1.12.3.3.1.1.4.{{outlet}}",
        command_oid=f"{ENTERPRISES}.318.1.1.12.3.3.1.1.4.{{outlet}}",
        state_on=(1,), state_off=(2,), command_on=1, command_off=2),
    # PowerNet-MIB sPDUOutletCtl (MasterSwitch AP9xxx).
    "apc_masterswitch": PduType(
        description="APC MasterSwitch (AP92xx, AP96xx)",
        state_oid=f"{ENTERPRISES}.318.1.1.4.4.2.1.3.{{outlet}}",
        command_oid=f"{ENTERPRISES}.318.1.1.4.4.2.1.3.{{outlet}}",
        state_on=(1,), state_off=(2,), command_on=1, command_off=2),
    # PDU2-MIB (PX2, PX3): outletSwitchingState on(7) / off(8) is read,
    # switchingOperation on(1) / off(0) is written; {unit} is the pduId.
    "raritan_px": PduType(
        description="Raritan PX2/PX3 (PDU2-MIB)",
        state_oid=f"{ENTERPRISES}.13742.6.4.1.2.1.3.{{unit}}.{{outlet}}",
        command_oid=f"{ENTERPRISES}.13742.6.4.1.2.1.2.{{unit}}.{{outlet}}",
        state_on=(7,), state_off=(8,), command_on=1, command_off=0),
    # Sentry3-MIB: outletStatus on(1) / off(0) (onWait(3) and offWait(2)
    # are on their way) is read, outletControlAction on(1) / off(2) is
    # written; {unit} is the tower, the infeed is the first.
    "servertech_sentry3": PduType(
        description="ServerTech Sentry3 (CW/CX/PDU-...)",
        state_oid=f"{ENTERPRISES}.1718.3.2.3.1.5.{{unit}}.1.{{outlet}}",
        command_oid=f"{ENTERPRISES}.1718.3.2.3.1.11.{{unit}}.1.{{outlet}}",
        state_on=(1,), state_off=(0,), command_on=1, command_off=2),
}
AUTH_PROTOCOLS = ("none", "md5", "sha", "sha224", "sha256", "sha384", "sha512")
PRIV_PROTOCOLS = ("none", "des", "3des", "aes", "aes192", "aes256")


class SnmpSettings(PowerSettings):
    SECRETS: ClassVar[tuple[str, ...]] = ("community", "auth_key", "priv_key")

    driver: Literal["snmp"]
    address: str
    outlet: Port
    pdu: Literal[tuple(PDUS)]  # type: ignore[valid-type]
    port: Port = 161
    unit: Port = 1
    version: Literal["1", "2c", "3"] = "2c"
    user: str | None = None
    auth_protocol: Literal[AUTH_PROTOCOLS] | None = None  # type: ignore[valid-type]
    priv_protocol: Literal[PRIV_PROTOCOLS] | None = None  # type: ignore[valid-type]
    context: str = ""
    cycle_delay: Seconds = 2
    community: Text | None = None
    community_file: Text | None = None
    community_env: Text | None = None
    # auth_key before priv_key: privacy is checked against what came before.
    auth_key: Text | None = None
    auth_key_file: Text | None = None
    auth_key_env: Text | None = None
    priv_key: Text | None = None
    priv_key_file: Text | None = None
    priv_key_env: Text | None = None

    @field_validator(*secret_forms("priv_key"))
    @classmethod
    def _privacy_needs_authentication(cls, value: str, info: ValidationInfo) -> str:
        if not any(info.data.get(key) is not None for key in secret_forms("auth_key")):
            raise refuse("SNMP v3 privacy (priv_key) needs auth_key too")
        return value


class SnmpDriver:
    Settings: ClassVar[type[PowerSettings]] = SnmpSettings
    reports_state: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("pysnmp.hlapi.v3arch.asyncio", "pysnmp.proto.rfc1902")

    def power_cycle(self, target: PowerTarget) -> Mapping[str, Any]:
        self._set(target, "off")
        delay = target.settings.get("cycle_delay", 2)
        time.sleep(float(delay))
        self._set(target, "on")
        return {"asked": f"outlet {target.settings['outlet']} off, {delay} s, on"}

    def power_on(self, target: PowerTarget) -> Mapping[str, Any]:
        self._set(target, "on")
        return {"asked": f"outlet {target.settings['outlet']} on"}

    def power_off(self, target: PowerTarget) -> Mapping[str, Any]:
        self._set(target, "off")
        return {"asked": f"outlet {target.settings['outlet']} off"}

    def power_state(self, target: PowerTarget) -> str:
        pdu = PDUS[str(target.settings["pdu"])]
        value = _run(target, "reading the outlet", _oid(pdu.state_oid, target), None)
        return ON if value in pdu.state_on else OFF if value in pdu.state_off else UNKNOWN

    def set_boot_device(self, target: PowerTarget, device: str, *, persistent: bool) -> None:
        return None

    def _set(self, target: PowerTarget, to: str) -> None:
        pdu = PDUS[str(target.settings["pdu"])]
        value = pdu.command_on if to == "on" else pdu.command_off
        _run(target, f"switching the outlet {to}", _oid(pdu.command_oid, target), value)


def _oid(template: str, target: PowerTarget) -> str:
    return template.format(outlet=int(target.settings["outlet"]),
                           unit=int(target.settings.get("unit", 1)))


def _run(target: PowerTarget, doing: str, oid: str, value: int | None) -> int:
    return asyncio.run(_request(target, doing, oid, value))


async def _request(target: PowerTarget, doing: str, oid: str, value: int | None) -> int:
    """One GET (value None) or SET on the PDU; returns the integer it holds."""
    from pysnmp.hlapi.v3arch import asyncio as hl
    from pysnmp.proto.rfc1902 import Integer32

    settings = target.settings
    where = f"SNMP PDU {settings['address']}:{settings.get('port', 161)}"
    timeout = timeout_of(settings)
    engine = hl.SnmpEngine()
    try:
        try:
            transport = await hl.UdpTransportTarget.create(
                (str(settings["address"]), int(settings.get("port", 161))),
                # Two tries in the timeout: a PDU drops a datagram now and then.
                timeout=timeout / 2, retries=1)
        except Exception as exc:
            raise PowerUnavailable(f"{where}: cannot resolve its address "
                                   f"({type(exc).__name__})") from None
        object_type = (hl.ObjectType(hl.ObjectIdentity(oid)) if value is None
                       else hl.ObjectType(hl.ObjectIdentity(oid), Integer32(value)))
        call = hl.get_cmd if value is None else hl.set_cmd
        indication, status, _index, binds = await call(
            engine, _credentials(target, hl), transport,
            hl.ContextData(contextName=str(settings.get("context", ""))), object_type)
    finally:
        engine.close_dispatcher()
    if indication:
        text = str(indication)
        if "timeout" in text.lower() or "no snmp response" in text.lower():
            if str(settings.get("version", "2c")) != "3" and await _answers_v3(target, hl):
                # An agent drops a request with a community it does not
                # know: silence. If it answers SNMPv3 discovery, it is alive.
                raise PowerFailed(f"{where} answers, but not to this community when "
                                  f"{doing}: the community is wrong or cannot write")
            raise PowerUnavailable(f"{where} did not answer {doing} within {timeout:g} s")
        # Authentication and decryption errors of SNMPv3 are definite.
        raise PowerFailed(f"{where} refused {doing}: {text[:200]}")
    if status:
        raise PowerFailed(f"{where} refused {doing} on {oid}: {status.prettyPrint()}")
    answered = binds[0][1]
    try:
        return int(answered)
    except (TypeError, ValueError):
        raise PowerFailed(f"{where} has no outlet {settings['outlet']} ({oid} holds "
                          f"{answered.prettyPrint()[:80]!r})") from None


async def _answers_v3(target: PowerTarget, hl: Any) -> bool:
    """Whether the agent answers SNMPv3 engine discovery (with a user it cannot
    know: any answer, even "unknown user", proves it is there)."""
    settings = target.settings
    engine = hl.SnmpEngine()
    try:
        transport = await hl.UdpTransportTarget.create(
            (str(settings["address"]), int(settings.get("port", 161))), timeout=1, retries=0)
        indication, _status, _index, _binds = await hl.get_cmd(
            engine, hl.UsmUserData("corral-probe"), transport, hl.ContextData(),
            hl.ObjectType(hl.ObjectIdentity("1.3.6.1.2.1.1.1.0")))
    except Exception:
        return False
    finally:
        engine.close_dispatcher()
    text = str(indication).lower() if indication else ""
    return bool(indication) and "timeout" not in text and "no snmp response" not in text


def _credentials(target: PowerTarget, hl: Any) -> Any:
    settings = target.settings
    version = str(settings.get("version", "2c"))
    if version != "3":
        community = target.secret("community")
        if community is None:
            raise PowerFailed(f"board {target.ctx.name}: SNMP {version} needs community, "
                              "community_file or community_env")
        return hl.CommunityData(community, mpModel=0 if version == "1" else 1)
    if not isinstance(settings.get("user"), str):
        raise PowerFailed(f"board {target.ctx.name}: SNMP v3 needs user")
    auth = {"none": hl.usmNoAuthProtocol, "md5": hl.usmHMACMD5AuthProtocol,
            "sha": hl.usmHMACSHAAuthProtocol, "sha224": hl.usmHMAC128SHA224AuthProtocol,
            "sha256": hl.usmHMAC192SHA256AuthProtocol,
            "sha384": hl.usmHMAC256SHA384AuthProtocol,
            "sha512": hl.usmHMAC384SHA512AuthProtocol}
    priv = {"none": hl.usmNoPrivProtocol, "des": hl.usmDESPrivProtocol,
            "3des": hl.usm3DESEDEPrivProtocol, "aes": hl.usmAesCfb128Protocol,
            "aes192": hl.usmAesCfb192Protocol, "aes256": hl.usmAesCfb256Protocol}
    auth_key, priv_key = target.secret("auth_key"), target.secret("priv_key")
    if priv_key and not auth_key:
        raise PowerFailed(f"board {target.ctx.name}: SNMP v3 privacy (priv_key) needs "
                          "authentication too (auth_key)")
    auth_protocol = settings.get("auth_protocol", "sha" if auth_key else "none")
    priv_protocol = settings.get("priv_protocol", "aes" if priv_key else "none")
    return hl.UsmUserData(str(settings["user"]), authKey=auth_key, privKey=priv_key,
                          authProtocol=auth[auth_protocol], privProtocol=priv[priv_protocol])

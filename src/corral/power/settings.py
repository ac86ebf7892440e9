"""A board's ``power:`` settings: checked at inventory import, read at run time,
hidden on the way out.

```yaml
power: {driver: redfish, address: "https://bmc-7.lab", system: "1",
        username: corral, password_file: /etc/corral/bmc-7.pass}
```

Every driver accepts the common settings (``controller``, ``concurrency``,
``timeout``, ``power_on_wait``, the fields of :class:`PowerSettings`) and its
own: each driver's ``Settings`` model, a subclass naming its fields, their
defaults, which of them are secrets, and its checks. A secret setting
(``password``, ``community``, ``auth_key``, ``priv_key``) may be given inline,
as ``NAME_file`` (a file whose first line is the secret, read when the
operation runs) or as ``NAME_env`` (an environment variable of the engine
process). Whatever the form, a secret's value never leaves the engine: every
answer shows it as :data:`HIDDEN`, and no message is built from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from corral.power.base import PowerFailed
from corral.validation import Omittable, Strict, refuse

HIDDEN = "(hidden)"
SECRET_NAMES = ("password", "community", "auth_key", "priv_key")
# Power setting names whose value is a secret, wherever they appear (every
# driver's SECRETS, which a test keeps equal).
SECRET_KEYS = frozenset(SECRET_NAMES)
SECRET_FORMS = ("", "_file", "_env")
DEFAULT_TIMEOUT = 20.0
DEFAULT_POWER_ON_WAIT = 30.0

Text = Annotated[str, StringConstraints(min_length=1)]
"""A secret inline, the file holding it, or the variable naming it."""
Port = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]


def secret_forms(name: str) -> tuple[str, ...]:
    """``password``, ``password_file``, ``password_env``: the keys one secret
    may be given as."""
    return tuple(f"{name}{suffix}" for suffix in SECRET_FORMS)


class PowerSettings(Omittable):
    """The settings every driver accepts; a driver's model adds its own, and
    names its secrets in ``SECRETS`` (each declared in its three forms, in the
    order of :func:`secret_forms`)."""

    SECRETS: ClassVar[tuple[str, ...]] = ()

    driver: str
    controller: str | None = None
    concurrency: int = Field(default=1, ge=1)
    timeout: Seconds = DEFAULT_TIMEOUT
    power_on_wait: Seconds = DEFAULT_POWER_ON_WAIT

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.hidden_keys = frozenset(k for name in cls.SECRETS for k in secret_forms(name))

    @field_validator("*")
    @classmethod
    def _one_form_of_each_secret(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        base = next((s for s in cls.SECRETS if name in secret_forms(s)), None)
        if base is not None and value is not None:
            given = [k for k in secret_forms(base) if k == name or info.data.get(k) is not None]
            if len(given) > 1:
                raise refuse("give one of {given}, not several", given=", ".join(given))
        return value


class OpenSettings(PowerSettings):
    """A driver whose other settings are free: the command templates'
    ``{power_*}`` variables."""

    model_config = ConfigDict(extra="allow")


class FreeSettings(Strict):
    """Power settings without a driver: free-form template variables for the
    command (or simulated) backend, as they always were."""

    model_config = ConfigDict(extra="allow")


def secret_reader(board: str, settings: Mapping[str, Any]) -> Callable[[str], str | None]:
    """A function that returns the secret ``name`` of a board's power settings
    (inline, ``name_file`` or ``name_env``), or None when none is given.

    Raises (when called):
        PowerFailed: the file cannot be read or the variable is unset. The
            message names the file or variable, never a value.
    """

    def read(name: str) -> str | None:
        if isinstance(settings.get(name), str):
            return str(settings[name])
        path = settings.get(f"{name}_file")
        if isinstance(path, str):
            try:
                with Path(path).open(encoding="utf-8") as handle:
                    return handle.readline().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise PowerFailed(f"board {board}: {name}_file {path} cannot be read: "
                                  f"{reason}") from None
        variable = settings.get(f"{name}_env")
        if isinstance(variable, str):
            value = os.environ.get(variable)
            if value is None:
                raise PowerFailed(f"board {board}: {name}_env names {variable}, which the "
                                  "engine's environment does not set")
            return value
        return None

    return read


def hide_secrets(attrs: Any) -> Any:
    """A board's attributes with every secret power setting replaced by
    :data:`HIDDEN` (the ``power`` mapping and its flattened ``power_*`` keys),
    and its ``console`` password."""
    if not isinstance(attrs, dict):
        return attrs
    power = attrs.get("power")
    console = attrs.get("console")
    flat = [k for k in attrs if k.startswith("power_") and k[6:] in SECRET_KEYS]
    if not flat and not (isinstance(power, dict) and SECRET_KEYS & power.keys()) \
            and not (isinstance(console, dict) and "password" in console):
        return attrs
    shown = {k: (HIDDEN if k in flat else v) for k, v in attrs.items()}
    if isinstance(console, dict):
        # A console's password (Serial-over-LAN) is a secret too.
        shown["console"] = {k: (HIDDEN if k == "password" else v) for k, v in console.items()}
    if isinstance(power, dict):
        shown["power"] = {k: (HIDDEN if k in SECRET_KEYS else v) for k, v in power.items()}
    return shown


def timeout_of(settings: Mapping[str, Any]) -> float:
    value = settings.get("timeout")
    return float(value) if isinstance(value, int | float) and value > 0 else DEFAULT_TIMEOUT


def power_on_wait_of(settings: Mapping[str, Any]) -> float:
    value = settings.get("power_on_wait")
    return (float(value) if isinstance(value, int | float) and value > 0
            else DEFAULT_POWER_ON_WAIT)


def controller_of(driver: str, settings: Mapping[str, Any]) -> str | None:
    """The controller whose commands are serialized: ``controller`` when the
    board names one, else the driver and its address (a PDU, a BMC), else a
    command board's relay; None when nothing says which controller it is."""
    named = settings.get("controller")
    if isinstance(named, str) and named:
        return named
    address = settings.get("address")
    if isinstance(address, str) and address:
        port = settings.get("port")
        return f"{driver}:{address}" + (f":{port}" if port is not None else "")
    relay = settings.get("relay")
    if isinstance(relay, str | int) and not isinstance(relay, bool):
        return f"relay:{relay}"
    return None


def concurrency_of(settings: Mapping[str, Any]) -> int:
    value = settings.get("concurrency")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1

"""A board's ``console:`` settings: where its serial console is read from,
checked at inventory import like ``power:``.

```yaml
console: {type: tcp, address: "ser2net.lab:7001"}          # ser2net, conserver
console: {type: file, path: /var/lib/corral-lab/vm/b1/serial.log}   # QEMU -serial file:
console: {type: unix, path: /var/lib/corral-lab/vm/b1/serial.sock}  # QEMU -serial unix:
console: {type: ipmi}            # Serial-over-LAN on the board's IPMI power BMC
console: {type: ipmi, address: 10.0.7.21, username: ADMIN, password_file: /etc/corral/bmc}
console: {type: simulated}
console: "tcp://ser2net.lab:7001"                      # the same, as a URL
```

A URL (``tcp://``, ``file://``, ``unix://``, ``ipmi://user:password@host:port``,
``simulated:``) is read into the mapping it stands for; a password in it is
a secret like ``password:`` (never shown, never logged). ``max_bytes``
bounds what is kept of this board's console (else the ``console_max_bytes``
setting).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BeforeValidator, Discriminator, Field, Tag, ValidationInfo, field_validator

from corral.power.settings import HIDDEN, Port, Text, secret_forms
from corral.validation import Omittable, refuse

CONSOLE_SECRETS = ("password",)
TYPES = ("tcp", "file", "unix", "ipmi", "simulated")


def _host_port(value: Any) -> Any:
    if isinstance(value, str):
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise refuse("must be HOST:PORT, e.g. ser2net.lab:7001, not {value}",
                         value=repr(value))
    return value


class ConsoleSettings(Omittable):
    SECRETS: ClassVar[tuple[str, ...]] = ()

    type: str
    max_bytes: int | None = Field(default=None, gt=0)


class TcpConsole(ConsoleSettings):
    type: Literal["tcp"]
    address: Annotated[str, BeforeValidator(_host_port)]


class FileConsole(ConsoleSettings):
    type: Literal["file"]
    path: Text


class UnixConsole(ConsoleSettings):
    type: Literal["unix"]
    path: Text


class IpmiConsole(ConsoleSettings):
    """Serial-over-LAN. Without ``address`` the board's ``power:`` (an
    ``ipmi`` driver) gives the BMC and its credentials."""

    SECRETS: ClassVar[tuple[str, ...]] = CONSOLE_SECRETS
    hidden_keys: ClassVar[frozenset[str]] = frozenset(CONSOLE_SECRETS)

    type: Literal["ipmi"]
    address: str | None = None
    port: Port = 623
    username: str | None = None
    cipher_suite: Port = 3
    password: Text | None = None
    password_file: Text | None = None
    password_env: Text | None = None

    @field_validator("password_file", "password_env")
    @classmethod
    def _one_password(cls, value: Any, info: ValidationInfo) -> Any:
        given = [k for k in secret_forms("password")
                 if k == info.field_name or info.data.get(k) is not None]
        if value is not None and len(given) > 1:
            raise refuse("give one of {given}, not several", given=", ".join(given))
        return value


class SimulatedConsole(ConsoleSettings):
    type: Literal["simulated"]


def from_url(value: Any) -> Any:
    """``tcp://host:port`` and friends, as the mapping they stand for."""
    if not isinstance(value, str):
        return value
    if value in ("simulated", "simulated:"):
        return {"type": "simulated"}
    parts = urlsplit(value)
    scheme = parts.scheme
    if scheme == "tcp" and parts.netloc and not parts.path.strip("/"):
        return {"type": "tcp", "address": parts.netloc}
    if scheme in ("file", "unix") and parts.path and not parts.netloc:
        return {"type": scheme, "path": unquote(parts.path)}
    if scheme == "ipmi" and parts.hostname:
        doc: dict[str, Any] = {"type": "ipmi", "address": parts.hostname}
        try:
            if parts.port is not None:
                doc["port"] = parts.port
        except ValueError:
            pass
        else:
            if parts.username:
                doc["username"] = unquote(parts.username)
            if parts.password:
                doc["password"] = unquote(parts.password)
            return doc
    shown = value
    if parts.password:
        shown = value.replace(f":{parts.password}@", f":{HIDDEN}@")
    raise refuse("a console URL is tcp://HOST:PORT, file:///PATH, unix:///PATH, "
                 "ipmi://USER:PASSWORD@HOST[:PORT] or simulated, not {value}",
                 value=repr(shown))


def _console_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if kind in TYPES else None


BoardConsole = Annotated[
    Annotated[TcpConsole, Tag("tcp")] | Annotated[FileConsole, Tag("file")]
    | Annotated[UnixConsole, Tag("unix")] | Annotated[IpmiConsole, Tag("ipmi")]
    | Annotated[SimulatedConsole, Tag("simulated")],
    Discriminator(_console_type, custom_error_type="console_type",
                  custom_error_message=f"type must be one of {', '.join(TYPES)}"),
    BeforeValidator(from_url)]


def console_of(attrs: Any) -> dict[str, Any] | None:
    """A board's stored console settings (None: it has none)."""
    console = attrs.get("console") if isinstance(attrs, dict) else None
    if isinstance(console, str):
        try:
            console = from_url(console)
        except ValueError:
            return None
    return dict(console) if isinstance(console, dict) and console.get("type") in TYPES \
        else None


def hide_console_secrets(console: Any) -> Any:
    """A console setting with its password shown as :data:`HIDDEN`."""
    if isinstance(console, str):
        parts = urlsplit(console)
        if parts.password:
            return console.replace(f":{parts.password}@", f":{HIDDEN}@", 1)
        return console
    if isinstance(console, dict):
        return {k: (HIDDEN if k in CONSOLE_SECRETS else v) for k, v in console.items()}
    return console

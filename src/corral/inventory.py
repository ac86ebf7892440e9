"""The board inventory file read by ``corral board import``.

```yaml
boards:
  - name: panda-0001
    arch: armhf
    subarch: omap4
    release: trusty          # what a reimage installs unless it names another
    mac: "00:11:22:33:44:01"
    hostname: panda-0001.lab
    power: {relay: relay-3, port: 4}
    commands: {power_cycle: "relay-ctl {power_relay} cycle {power_port}"}
  - name: server-07
    mac: "00:11:22:33:44:07"
    power: {driver: redfish, address: "https://bmc-07.lab", system: "1",
            username: corral, password_file: /etc/corral/bmc-07.pass}
```

A board's ``power.driver`` (see docs/power.md) has its settings checked here,
by that driver's settings model, and so has its ``console:`` (where its
serial console is captured from, docs/console-capture.md); the driver's
library must import too (``sushy`` and ``pysnmp`` come with the ``power``
extra).

The whole file is validated before anything is written, and every problem is
reported with its line: :class:`Board` is the shape of one board; what no
single board can tell (a name or a MAC listed twice) is checked across them.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from corral.console.settings import BoardConsole, from_url
from corral.machines.loader import DefinitionError
from corral.names import BOARD_NAME
from corral.operations.command import template_fields
from corral.power.drivers import BoardPower, missing_extra
from corral.power.settings import SECRET_KEYS
from corral.validation import Omittable, Problem, Strict, refuse, validate
from corral.yamlio import LineDict, LineList, YamlSyntaxError, load_yaml

BOARD_NAME_RE = BOARD_NAME.regex
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
# What a command template may fill in besides the board's own values.
TEMPLATE_EXTRAS = ("name", "operation_id")


class InventoryError(DefinitionError):
    """One or more problems in an inventory file."""


def _board_name(value: Any) -> str:
    if not isinstance(value, str) or not BOARD_NAME_RE.fullmatch(value):
        raise refuse("must be letters, digits, '.', '_' and '-' (at most 200), not {value}",
                     value=repr(value))
    return value


def _mac(value: Any) -> str:
    if not isinstance(value, str) or not MAC_RE.fullmatch(value):
        raise refuse("must look like 00:11:22:33:44:55 (quote it in YAML), not {value}",
                     value=repr(value))
    return value


def _template(template: str) -> str:
    try:
        template_fields(template)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    return template


BoardName = Annotated[str, BeforeValidator(_board_name)]
Mac = Annotated[str, BeforeValidator(_mac)]
Template = Annotated[str, AfterValidator(_template)]


class Board(Omittable):
    """One board of the inventory."""

    name: BoardName
    arch: str | None = None
    subarch: str | None = None
    release: str | None = None
    mac: Mac | None = None
    hostname: str | None = None
    # Generated from the driver registry, so not a type a checker can read.
    power: BoardPower | None = None  # type: ignore[valid-type]
    poll: dict[str, Any] | None = None
    console: BoardConsole | None = None
    commands: dict[str, Template] | None = None
    labels: dict[str, Any] | None = None


class Inventory(Strict):
    boards: list[Board]


def load_inventory(path: Path) -> dict[str, dict[str, Any]]:
    """Return ``{board name: attributes}``.

    Raises:
        InventoryError: listing every problem with file and line.
    """
    where = str(path)
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InventoryError([Problem(path=where, line=0, message=exc.strerror or "unreadable")]
                             ) from None
    except YamlSyntaxError as exc:
        raise InventoryError([Problem(path=where, line=exc.line, message=str(exc))]) from None
    if isinstance(doc, LineList):
        # A bare list of boards is an inventory too.
        doc = _under_boards(doc)
    if not isinstance(doc, LineDict):
        raise InventoryError([Problem(path=where, line=getattr(doc, "line", 1),
                                      message="an inventory is a list of boards under 'boards:'")])
    _, problems = validate(Inventory, doc, where)
    boards = doc.get("boards")
    result: dict[str, dict[str, Any]] = {}
    if isinstance(boards, LineList):
        problems += _listed_twice(boards, where)
        for board in boards:
            if isinstance(board, LineDict) and isinstance(board.get("name"), str):
                result.setdefault(board["name"], _attributes(board))
        if not problems:
            problems += _unknown_template_fields(boards, result, where)
        problems += _drivers_not_installed(boards, where)
    if problems:
        raise InventoryError(sorted(problems, key=lambda p: p.line))
    return result


def _under_boards(boards: LineList) -> LineDict:
    doc = LineDict(boards=boards)
    doc.line = boards.line
    doc.key_lines = {"boards": boards.line}
    return doc


def _listed_twice(boards: LineList, where: str) -> list[Problem]:
    """A name or a MAC given to two boards (each board's own checks are the
    model's)."""
    problems = []
    names: set[str] = set()
    macs: dict[str, str] = {}
    for index, board in enumerate(boards):
        name = board.get("name") if isinstance(board, LineDict) else None
        if not isinstance(name, str) or not BOARD_NAME_RE.fullmatch(name):
            continue
        if name in names:
            problems.append(Problem(path=where, line=board.line_of("name"),
                                    message=f"boards[{index}].name: board {name!r} is listed "
                                    "twice"))
        names.add(name)
        mac = board.get("mac")
        if isinstance(mac, str) and MAC_RE.fullmatch(mac):
            # Firmware finds its boot configuration by MAC: two boards with one
            # MAC would boot each other's installer.
            if mac.lower() in macs:
                problems.append(Problem(path=where, line=board.line_of("mac"),
                                        message=f"boards[{index}].mac: mac {mac} is also "
                                        f"{macs[mac.lower()]}'s"))
            macs.setdefault(mac.lower(), name)
    return problems


def _unknown_template_fields(boards: LineList, result: dict[str, dict[str, Any]], where: str
                             ) -> list[Problem]:
    """A board's command template may fill in only that board's values."""
    problems = []
    for index, board in enumerate(boards):
        commands = board.get("commands") or LineDict()
        attrs = result[board["name"]]
        known = sorted({k for k, v in attrs.items() if not isinstance(v, dict | list)}
                       | set(TEMPLATE_EXTRAS))
        for kind, template in commands.items():
            for field in template_fields(template):
                if field not in known:
                    problems.append(Problem(
                        path=where, line=commands.line_of(kind),
                        message=f"boards[{index}].commands.{kind}: template field {{{field}}} "
                        f"is not one of the board's values ({', '.join(known)})"))
    return problems


def _drivers_not_installed(boards: LineList, where: str) -> list[Problem]:
    """A board whose power driver's library does not import here: accepted,
    it would be retried for ever at its first power operation."""
    problems = []
    missing: dict[str, str | None] = {}
    for index, board in enumerate(boards):
        power = board.get("power") if isinstance(board, LineDict) else None
        if not isinstance(power, LineDict) or not isinstance(power.get("driver"), str):
            continue
        driver = power["driver"]
        if driver not in missing:
            missing[driver] = missing_extra(driver)
        message = missing[driver]
        if message is not None:
            problems.append(Problem(path=where, line=power.line_of("driver"),
                                    message=f"boards[{index}].power.driver: {message}"))
    return problems


def _attributes(board: LineDict) -> dict[str, Any]:
    """A board's stored attributes: what the file says, with ``power`` and
    ``poll`` also flattened for command templates (``power_relay``)."""
    name = board["name"]
    attrs = {k: _plain(v) for k, v in board.items() if k != "name"}
    if isinstance(attrs.get("console"), str):
        # Kept as the mapping it stands for, so its password is hidden like others
        # (a URL that is not one is the model's error to report).
        with contextlib.suppress(ValueError):
            attrs["console"] = from_url(attrs["console"])
    for key in ("power", "poll"):
        # A secret stays where it is: no template needs it.
        for sub, value in (attrs.get(key) or {}).items() if isinstance(attrs.get(key),
                                                                       dict) else ():
            if not (key == "power" and sub in SECRET_KEYS):
                attrs.setdefault(f"{key}_{sub}", value)
    attrs.setdefault("hostname", name)
    return attrs


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value

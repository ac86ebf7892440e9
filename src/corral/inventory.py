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

A board's ``power.driver`` (see docs/power.md) has its settings checked here.

The whole file is validated before anything is written, and every problem is
reported with its line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from corral.machines.loader import DefinitionError, Problem
from corral.names import BOARD_NAME
from corral.power.drivers import check_power
from corral.power.settings import SECRET_KEYS
from corral.yamlio import LineDict, LineList, YamlSyntaxError, load_yaml

BOARD_KEYS = ("name", "arch", "subarch", "release", "mac", "hostname", "power", "poll",
              "commands", "labels")
BOARD_NAME_RE = BOARD_NAME.regex
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


class InventoryError(DefinitionError):
    """One or more problems in an inventory file."""


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
    problems: list[Problem] = []

    def error(line: int, message: str) -> None:
        problems.append(Problem(path=where, line=line, message=message))

    boards = doc.get("boards") if isinstance(doc, LineDict) else doc
    if isinstance(doc, LineDict):
        for key in doc:
            if key != "boards":
                error(doc.line_of(key), f"unknown key {key!r}; allowed keys: boards")
    if not isinstance(boards, LineList):
        raise InventoryError([Problem(path=where, line=getattr(doc, "line", 1),
                                      message="an inventory is a list of boards under 'boards:'")])
    result: dict[str, dict[str, Any]] = {}
    macs: dict[str, str] = {}
    for index, board in enumerate(boards):
        line = boards.line_of(index)
        if not isinstance(board, LineDict):
            error(line, f"board must be a mapping with keys: {', '.join(BOARD_KEYS)}")
            continue
        for key in board:
            if key not in BOARD_KEYS:
                error(board.line_of(key), f"unknown key {key!r}; allowed keys: "
                      f"{', '.join(BOARD_KEYS)}")
        name = board.get("name")
        if not isinstance(name, str) or not BOARD_NAME_RE.fullmatch(name):
            error(board.line_of("name"), "name is required: letters, digits, '.', '_' and '-' "
                  f"(at most 200), not {name!r}")
            continue
        if name in result:
            error(board.line_of("name"), f"board {name!r} is listed twice")
        for key in ("arch", "subarch", "release", "hostname"):
            if key in board and not isinstance(board[key], str):
                error(board.line_of(key), f"{key} must be a string, not {board[key]!r}")
        if "mac" in board and not (isinstance(board["mac"], str)
                                   and MAC_RE.fullmatch(board["mac"])):
            error(board.line_of("mac"), f"mac must look like 00:11:22:33:44:55 (quote it in "
                  f"YAML), not {board['mac']!r}")
        elif "mac" in board:
            # Firmware finds its boot configuration by MAC: two boards with one
            # MAC would boot each other's installer.
            mac = board["mac"].lower()
            if mac in macs:
                error(board.line_of("mac"), f"mac {board['mac']} is also {macs[mac]}'s")
            macs.setdefault(mac, name)
        for key in ("power", "poll", "commands", "labels"):
            if key in board and not isinstance(board[key], dict):
                error(board.line_of(key), f"{key} must be a mapping")
        if isinstance(board.get("power"), LineDict):
            power = board["power"]
            check_power(power, power.line_of, error, line=board.line_of("power"))
        attrs = {k: _plain(v) for k, v in board.items() if k != "name"}
        for key in ("power", "poll"):
            # Flatten power.relay to power_relay so command templates can use
            # it (a secret stays where it is: no template needs it).
            for sub, value in (attrs.get(key) or {}).items() if isinstance(attrs.get(key),
                                                                           dict) else ():
                if not (key == "power" and sub in SECRET_KEYS):
                    attrs.setdefault(f"{key}_{sub}", value)
        attrs.setdefault("hostname", name)
        result[name] = attrs
    if problems:
        raise InventoryError(problems)
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value

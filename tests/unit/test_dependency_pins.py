"""A fresh install gets the uvicorn the callback fast path was written against:
pyproject allows only that minor release, and constraints.txt (which `make
install` uses) pins the tested versions inside it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from corral.api.protocol import SUPPORTED_UVICORN

ROOT = Path(__file__).resolve().parents[2]


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_install_pins_the_uvicorn_the_callback_protocol_supports():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"]
    [uvicorn] = [d for d in dependencies if d.startswith("uvicorn")]
    low, high = re.fullmatch(r"uvicorn\[standard\]>=([\d.]+),<([\d.]+)", uvicorn).groups()
    assert _minor(low) == SUPPORTED_UVICORN[0]
    assert _minor(high) == (SUPPORTED_UVICORN[1][0], SUPPORTED_UVICORN[1][1] + 1)

    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(),
                           re.MULTILINE))
    assert set(pins) == {"uvicorn", "httptools"}
    assert SUPPORTED_UVICORN[0] <= _minor(pins["uvicorn"]) <= SUPPORTED_UVICORN[1]
    makefile = (ROOT / "Makefile").read_text()
    assert "$(STAMP): pyproject.toml constraints.txt" in makefile
    assert "pip install --quiet -c constraints.txt -e '.[dev,power]'" in makefile

"""The v1 spec reference table in docs/jobs.md, generated from the schema.

    python -m corral.jobs.reference --update docs/jobs.md   (``make docs``)
"""

from __future__ import annotations

import sys
from pathlib import Path

from corral.jobs import v1

START, END = "<!-- fields:v1 -->\n", "<!-- /fields:v1 -->"


def v1_table() -> str:
    rows = ["| field | type | required | meaning |", "| --- | --- | --- | --- |"]
    for path, kind, required, text in v1.FIELDS:
        rows.append(f"| `{path}` | {kind} | {'yes' if required else 'no'} | {text} |")
    return "\n".join(rows) + "\n"


def update(path: Path) -> None:
    text = path.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + START + v1_table() + END + tail)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--update"] or len(sys.argv) != 3:
        sys.exit("usage: python -m corral.jobs.reference --update docs/jobs.md")
    update(Path(sys.argv[2]))

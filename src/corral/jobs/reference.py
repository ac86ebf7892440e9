"""The spec reference tables in docs/jobs.md, generated from each version's
schema.

    python -m corral.jobs.reference --update docs/jobs.md   (``make docs``)
"""

from __future__ import annotations

import sys
from pathlib import Path

from corral.jobs import v1, v2

FIELDS = {"v1": v1.FIELDS, "v2": v2.FIELDS}


def table(version: str) -> str:
    """The reference table of ``version`` (``v1``, ``v2``) as markdown."""
    rows = ["| field | type | required | meaning |", "| --- | --- | --- | --- |"]
    for path, kind, required, text in FIELDS[version]:
        rows.append(f"| `{path}` | {kind} | {'yes' if required else 'no'} | {text} |")
    return "\n".join(rows) + "\n"


def update(path: Path) -> None:
    text = path.read_text()
    for version in FIELDS:
        start, end = f"<!-- fields:{version} -->\n", f"<!-- /fields:{version} -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + start + table(version) + end + tail
    path.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--update"] or len(sys.argv) != 3:
        sys.exit("usage: python -m corral.jobs.reference --update docs/jobs.md")
    update(Path(sys.argv[2]))

"""``python -m corral.lab.probe URL TEXT``: the lab's ping and poll.

Exits 0 when ``URL`` answers 200 within three seconds with a body holding
``TEXT`` (the installed system's banner), 1 otherwise, saying why. Through
QEMU's port forward a connection is always accepted; only a system that is up
and serving answers, so this is a real check of the board.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def probe(url: str, text: str, timeout: float = 3.0) -> str | None:
    """None when the board answers as expected, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body = reply.read(4096).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"no answer from {url}: {getattr(exc, 'reason', exc)}"
    if text not in body:
        return f"{url} answered {body.strip()[:200]!r}, not {text!r}"
    print(body.strip())
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m corral.lab.probe URL TEXT", file=sys.stderr)
        return 2
    problem = probe(args[0], args[1])
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What never reaches the console store: secrets a board's console prints.

A board's own secrets (its BMC or console password) are replaced wherever
they appear; so are Corral's tokens (``corral_<id>_<secret>``: the reimage
token rides on the kernel command line, ``corral.token=...``, which Linux
prints at boot) and ``password=``/``token=``-style words on any command
line. The capture redacts whole lines (it holds a line back until its end
arrives, or briefly for a prompt), so a secret split across two reads is
still found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from corral.power.settings import HIDDEN

# Corral's bearer tokens (corral.tokens: "corral_<id>_<urlsafe secret>").
_TOKEN = re.compile(r"\bcorral_[0-9]{1,19}_[A-Za-z0-9_-]{8,}")
# key=value words whose value is a secret, as boot loaders and kernels print them.
_KEYED = re.compile(r"(?i)\b([\w.-]*(?:token|password|passwd|secret|api[_-]?key))"
                    r"(=|: ?)(?!\(hidden\))[^\s\"']+")
# A secret shorter than this is not searched for: it would blank out
# ordinary words (a board's password is never that short in practice).
MIN_SECRET = 4


class Redactor:
    """Replaces secrets in console text with :data:`HIDDEN`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        known = sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len,
                       reverse=True)
        self._known = re.compile("|".join(re.escape(s) for s in known)) if known else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(HIDDEN, text)
        text = _TOKEN.sub(HIDDEN, text)
        return _KEYED.sub(lambda m: f"{m[1]}{m[2]}{HIDDEN}", text)

"""The one check every user-supplied JSON value passes before Corral stores it.

Event payloads (board callbacks, the operator ``/fire`` route, the CLI), the
reasons operators give, and job specs all end up in JSON columns. The backends
disagree about what a JSON document may hold: PostgreSQL's ``jsonb`` refuses
NUL characters and unpaired surrogates and turns a float that does not fit
into an error, SQLite stores whatever Python's encoder writes, and a
document nested a thousand levels deep can be written but not read back
(Python's decoder and encoder give up with ``RecursionError``). So one
function decides, before anything is written, on every backend alike: a
value passes :func:`check_json` only if every backend stores it and reads it
back equal.

:func:`readable` is the other half, for reading: it makes any stored value
(one written before this check existed, say) safe to answer with.
"""

from __future__ import annotations

import json
import math
from typing import Any

from corral.errors import InvalidRequest
from corral.validation import describe

MAX_DEPTH = 32
"""Containers inside containers: a board's report needs two or three levels; a
job spec, six or seven."""

MAX_PAYLOAD_BYTES = 64 * 1024
"""An event payload, encoded as JSON. A history row is not a place for bulk data."""

MAX_TEXT = 2000
"""A reason (or any one-line text an operator gives)."""

# What a free text (a reason, a purpose, a secret) may hold, as the request
# models declare it: no NUL, which PostgreSQL refuses (unpaired surrogates
# never pass pydantic's str). Explicit classes rather than \s or \S, which
# the server's regex engine and a JSON Schema (ECMAScript) one read
# differently (U+0085, U+FEFF).
TEXT_PATTERN = r"^[^\x00]*$"
# The same, holding something besides whitespace as str.strip() sees it (a
# reason that is required), each whitespace character spelled out.
_SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NONBLANK_PATTERN = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"

# Integers beyond what a signed 64-bit column, a JavaScript client or a
# MariaDB JSON document keeps exactly are refused rather than rounded.
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)


def _where(path: list[str | int], root: str) -> str:
    text = root
    for part in path:
        # A key is the client's: shown repaired, so that the error itself is valid text.
        text += f"[{part}]" if isinstance(part, int) else f".{_repair_text(part)[:100]}"
    return text


def _check_text(text: str, where: str, what: str) -> None:
    if "\x00" in text:
        raise InvalidRequest(f"{where}: {what} holds a NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where}: {what} is not valid Unicode (an unpaired surrogate, "
                             "\\ud800-\\udfff)") from None


def check_json(value: Any, where: str = "payload", *, max_depth: int = MAX_DEPTH,
               max_bytes: int | None = MAX_PAYLOAD_BYTES) -> None:
    """Refuse a value that some backend would not store and read back equal.

    Allowed: ``None``, booleans, integers and finite floats within the signed
    64-bit range, strings without NUL and with valid Unicode, lists, and
    mappings with string keys, nested at most ``max_depth`` containers deep, and (with
    ``max_bytes``) at most that many bytes once encoded as JSON.

    Raises:
        InvalidRequest: naming the first offending place, as ``where.key[0]``.
    """
    if value is None:  # most events carry no payload
        return
    # Iterative, so that depth is checked without recursing into it.
    stack: list[tuple[Any, list[str | int], int]] = [(value, [], 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise InvalidRequest(f"{_where(path, where)}: the integer is outside the "
                                     "signed 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequest(f"{_where(path, where)}: numbers must be finite, not "
                                     f"{item!r} (NaN, Infinity and overflowing numbers such "
                                     "as 1e400 are refused)")
            # JSON (and so a JSON Schema) has one number type: 1e19 and
            # 10000000000000000000 are the same number, held to the same range.
            if not MIN_INT <= item <= MAX_INT:
                raise InvalidRequest(f"{_where(path, where)}: the number is outside the "
                                     "signed 64-bit range")
        elif isinstance(item, str):
            _check_text(item, _where(path, where), "the string")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise InvalidRequest(f"{_where(path, where)}: nested more than {max_depth} "
                                     "levels deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise InvalidRequest(f"{_where(path, where)}: keys must be strings, "
                                             f"not {describe(key)}")
                    _check_text(key, _where([*path, key], where), "the key")
                    stack.append((child, [*path, key], depth + 1))
            else:
                stack.extend((child, [*path, index], depth + 1)
                             for index, child in enumerate(item))
        else:
            raise InvalidRequest(f"{_where(path, where)}: not a JSON value (a string, a "
                                 "number, true, false, null, a list or an object)")
    if max_bytes is not None:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        if size > max_bytes:
            raise InvalidRequest(f"{where}: {size} bytes as JSON; at most {max_bytes}")


def check_text(text: str | None, where: str, *, max_length: int = MAX_TEXT) -> None:
    """Refuse a free text (a reason) that holds NUL or invalid Unicode, or is too long.

    Raises:
        InvalidRequest: naming ``where``.
    """
    if text is None:
        return
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}: must be a string, not {describe(text)}")
    _check_text(text, where, "the text")
    if len(text) > max_length:
        raise InvalidRequest(f"{where}: {len(text)} characters; at most {max_length}")


UNREADABLE = "<unreadable: nested too deeply>"


def readable(value: Any, *, max_depth: int = MAX_DEPTH * 2) -> Any:
    """A stored JSON value made safe to answer with, whatever was stored.

    Unpaired surrogates become U+FFFD, NUL is dropped, and containers nested
    deeper than ``max_depth`` are replaced by a marker string, so a value
    written before :func:`check_json` existed never fails a read. Values
    :func:`check_json` accepts come back unchanged (the same object).
    """
    if _clean(value, max_depth):
        return value
    return _repair(value, max_depth)


def readable_text(text: str | None) -> str | None:
    """A stored text made safe to answer with (see :func:`readable`)."""
    return _repair_text(text) if isinstance(text, str) else text


def _clean(value: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or not _encodes(item):
                return False
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return False
            children = (list(item.keys()) + list(item.values())) if isinstance(item, dict) \
                else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            return False
    return True


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _repair_text(text: str) -> str:
    if _encodes(text) and "\x00" not in text:
        return text
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c
                   for c in text if c != "\x00")


def _repair(value: Any, depth_left: int) -> Any:
    if isinstance(value, str):
        return _repair_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list):
        if depth_left <= 0:
            return UNREADABLE
        if isinstance(value, dict):
            return {_repair_text(str(k)): _repair(v, depth_left - 1) for k, v in value.items()}
        return [_repair(v, depth_left - 1) for v in value]
    return value

"""The callback route's answers are written by hand-assembled encoders; they
must say exactly what the standard library would."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.api.callbacks import encode_answer, encode_json

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20)


@given(JSON)
def test_encode_json_is_compact_json_dumps(value):
    assert encode_json(value) == json.dumps(value, separators=(",", ":"))


def test_encode_json_refuses_what_json_refuses():
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_json({"when": object()})


def test_encode_answer():
    status, fields, data = encode_answer(401, {"error": "unauthorized", "message": "é"},
                                         {"WWW-Authenticate": "Bearer"})
    assert (status, data) == (401, b'{"error":"unauthorized","message":"\\u00e9"}')
    assert fields == [(b"content-type", b"application/json"),
                      (b"content-length", str(len(data)).encode()),
                      (b"x-content-type-options", b"nosniff"),
                      (b"referrer-policy", b"no-referrer"),
                      (b"www-authenticate", b"Bearer")]

"""The callback fast path checks a payload by hand (parse_payload, then the
payload check); /openapi.json documents it with the pydantic type Payload.
Fed the same generated bodies, the two must take and refuse the same ones."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from corral.api.callbacks import ApiError, parse_payload
from corral.api.models import CheckedPayload, Payload
from corral.errors import InvalidRequest
from corral.payload import MAX_INT, MIN_INT, check_json

EDGE_INTEGERS = st.sampled_from([MIN_INT - 1, MIN_INT, MAX_INT, MAX_INT + 1, 2**64, -(2**70)])
EDGE_FLOATS = st.sampled_from([float(MAX_INT), float(2**63 - 1024), -float(2**63), 1e19,
                               -1e19, 1e300, 0.5])
SCALARS = (st.none() | st.booleans() | st.integers() | EDGE_INTEGERS
           | st.floats(allow_nan=False, allow_infinity=False) | EDGE_FLOATS
           | st.text(max_size=8) | st.just("a\x00b"))
KEYS = st.text(max_size=4) | st.just("\x00")
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
BODIES = st.dictionaries(KEYS, VALUES, max_size=4) | VALUES


def fast_path_takes(body: bytes) -> bool:
    try:
        check_json(parse_payload(body, "application/json"))
    except (ApiError, InvalidRequest):
        return False
    return True


def model_takes(body: bytes, adapter: TypeAdapter) -> bool:
    try:
        adapter.validate_json(body)
    except ValidationError:
        return False
    return True


DOCUMENTED = TypeAdapter(Payload | None)
CHECKED = TypeAdapter(CheckedPayload | None)


@settings(max_examples=1000)
@given(BODIES)
def test_the_fast_path_and_the_documented_type_take_the_same_payloads(value):
    body = json.dumps(value).encode()
    takes = fast_path_takes(body)
    assert model_takes(body, DOCUMENTED) == takes, body
    # The model request bodies use (FireIn's payload) answers alike too.
    assert model_takes(body, CHECKED) == takes, body
    if takes and value is not None:
        assert DOCUMENTED.validate_json(body) == json.loads(body)


@pytest.mark.parametrize("body", [b'{"a": 9223372036854775808}', b'{"a": 1e19}',
                                  b'{"a": "x\\u0000"}', b'{"\\u0000": 1}', b"[1]",
                                  b'{"a": 9223372036854775807.5}'])
def test_what_both_refuse(body):
    assert not fast_path_takes(body)
    assert not model_takes(body, DOCUMENTED)


def test_a_refusal_names_the_place_in_the_payload():
    with pytest.raises(ValidationError, match=r"payload\.a\[1\]: the integer is outside"):
        CHECKED.validate_json(b'{"a": [0, 9223372036854775808]}')

"""Input decoding (every dead-letter rule), output encoding (json/f32 round trips), dead-letter records."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from worker.codecs import InputDecoder, OutputEncoder, Reason, dead_letter, fallback_id
from worker.settings import EmptyTextPolicy, InputFormat, InputSettings, OutputFormat


def decode(values, fmt=InputFormat.json, **kw):
    dec = InputDecoder(InputSettings(format=fmt, **kw))
    keys = [f"k{i}".encode() for i in range(len(values))]
    where = [("t", 0, i) for i in range(len(values))]
    return dec.decode(values, keys, where)


@pytest.mark.parametrize(("value", "reason"), [
    (None, Reason.NULL_VALUE),
    (b"\xff\xfe", Reason.INVALID_UTF8),
    (b'{"text": "\xff"}', Reason.INVALID_UTF8),
    (b"{nope", Reason.INVALID_JSON),
    (b"[1,2]", Reason.INVALID_JSON),
    (b'"just a string"', Reason.INVALID_JSON),
    (b"[" * 100_000, Reason.INVALID_JSON),
    (b'{"id": 1}', Reason.MISSING_TEXT),
    (b'{"text": 5}', Reason.NON_STRING_TEXT),
    (b'{"text": null}', Reason.NON_STRING_TEXT),
    (b'{"text": ["a"]}', Reason.NON_STRING_TEXT),
    (b'{"text": ""}', Reason.EMPTY_TEXT),
    (b'{"text": " \\t\\n\\u3000"}', Reason.EMPTY_TEXT),
])
def test_each_bad_json_input_has_its_reason(value, reason):
    out = decode([value, b'{"id": "ok", "text": "fine"}'])
    assert [(i, r) for i, r, _ in out.bad] == [(0, reason)]
    assert out.good == [1] and out.ids == ["ok"] and out.texts == ["fine"]
    assert out.bad[0][2]  # a human-readable message


def test_too_large_and_custom_fields():
    out = decode([b'{"doc": "' + b"x" * 100 + b'"}', b'{"key": 7, "doc": "hello"}'], max_bytes=50,
                 text_field="doc", id_field="key")
    assert out.bad[0][1] == Reason.TOO_LARGE
    assert out.ids == [7] and out.texts == ["hello"]


def test_ids_fall_back_to_key_then_coordinates():
    out = decode([b'{"text": "a"}'])
    assert out.ids == ["k0"]
    assert fallback_id(None, "topic", 3, 42) == "topic-3-42"


def test_text_format_uses_the_raw_value_and_key():
    out = decode([b"hello world", b"\xc3\x28", b"   "], fmt=InputFormat.text)
    assert out.texts == ["hello world"] and out.ids == ["k0"]
    assert [r for _, r, _ in out.bad] == [Reason.INVALID_UTF8, Reason.EMPTY_TEXT]


def test_empty_text_can_be_embedded_as_zero_vector():
    out = decode([b'{"text": ""}'], empty_text=EmptyTextPolicy.zero_vector)
    assert out.texts == [""] and not out.bad


def test_json_output_round_trips_float32_exactly():
    vecs = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    enc = OutputEncoder(OutputFormat.json, "m/x", 16)
    values = enc.values(["a", 2, None], vecs)
    docs = [orjson.loads(v) for v in values]
    assert [d["id"] for d in docs] == ["a", 2, None]
    assert all(d["model"] == "m/x" and d["dim"] == 16 for d in docs)
    np.testing.assert_array_equal(np.array([d["embedding"] for d in docs], dtype=np.float32), vecs)
    assert enc.extra_headers("a") == []


def test_f32_output_is_little_endian_with_self_describing_headers():
    vecs = np.arange(8, dtype=np.float32).reshape(2, 4)
    enc = OutputEncoder(OutputFormat.f32, "m", 4)
    values = enc.values(["a", "b"], vecs)
    assert [len(v) for v in values] == [16, 16]
    np.testing.assert_array_equal(np.frombuffer(values[1], dtype="<f4"), vecs[1])
    assert dict(enc.extra_headers("a")) == {"id": b"a", "model": b"m", "dim": b"4"}


def test_dead_letter_keeps_small_values_and_omits_huge_ones():
    value, headers = dead_letter(b"abc", Reason.INVALID_JSON, "bad", "t", 1, 9, max_value_bytes=10)
    h = dict(headers)
    assert value == b"abc" and h["error-type"] == b"invalid_json" and h["source-offset"] == b"9"
    assert "error-value-omitted" not in h
    value, headers = dead_letter(b"x" * 11, Reason.TOO_LARGE, "big", "t", 1, 9, max_value_bytes=10)
    assert value is None and dict(headers)["error-value-omitted"] == b"11"

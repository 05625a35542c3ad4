"""Input decoding (every dead-letter rule), output encoding (json/f32 round trips), dead-letter records."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from worker.codecs import (
    InputDecoder,
    OutputEncoder,
    OutputRecord,
    Reason,
    chunk_ident,
    dead_letter,
    dequantize,
    fallback_id,
)
from worker.settings import EmptyTextPolicy, InputFormat, InputSettings, OutputFormat, OutputSettings


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


def records(ids, **kw):
    return [OutputRecord(i, ident, **kw) for i, ident in enumerate(ids)]


def test_json_output_round_trips_float32_exactly():
    vecs = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    enc = OutputEncoder(OutputSettings(), "m/x", 16)
    values = enc.values(records(["a", 2, None]), vecs)
    docs = [orjson.loads(v) for v in values]
    assert [d["id"] for d in docs] == ["a", 2, None]
    assert all(set(d) == {"id", "embedding", "model", "dim"} for d in docs)
    assert all(d["model"] == "m/x" and d["dim"] == 16 for d in docs)
    np.testing.assert_array_equal(np.array([d["embedding"] for d in docs], dtype=np.float32), vecs)
    assert enc.extra_headers("a") == []


def test_f32_output_is_little_endian_with_self_describing_headers():
    vecs = np.arange(8, dtype=np.float32).reshape(2, 4)
    enc = OutputEncoder(OutputSettings(format=OutputFormat.f32), "m", 4)
    values = enc.values(records(["a", "b"]), vecs)
    assert [len(v) for v in values] == [16, 16]
    np.testing.assert_array_equal(np.frombuffer(values[1], dtype="<f4"), vecs[1])
    assert dict(enc.extra_headers("a")) == {"id": b"a", "model": b"m", "dim": b"4", "dtype": b"float32"}


def _cosine(a, b):
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(("dtype", "size", "min_cos"), [("float16", 2, 0.99999), ("int8", 1, 0.999)])
def test_compact_binary_outputs_round_trip_close_to_float32(model_factory, dtype, size, min_cos):
    """The accuracy figure in README: cosine(dequantized, float32) over the test corpus."""
    from modelfactory import sample_texts
    from worker.encoder import Encoder
    from worker.model import load_model

    vecs = Encoder(load_model(model_factory("unigram", dim=64))).encode(sample_texts(2000, seed=5))
    vecs = vecs[np.linalg.norm(vecs, axis=1) > 0]
    enc = OutputEncoder(OutputSettings(format=OutputFormat.binary, dtype=dtype), "m", 64)
    recs = records(range(len(vecs)))
    values = enc.values(recs, vecs)
    assert all(len(v) == 64 * size for v in values)
    back = np.vstack([dequantize(v, dtype, float(dict(r.headers).get("scale", b"1"))) for v, r in
                      zip(values, recs, strict=True)])
    cos = _cosine(back, vecs)
    print(f"{dtype}: cosine to float32 over {len(vecs)} vectors: mean {cos.mean():.6f}, min {cos.min():.6f}")
    assert cos.min() >= min_cos
    assert dict(enc.extra_headers(1))["dtype"] == dtype.encode()


QDRANT_FORM = {"collection_name": str, "id": (str, int), "vector": list, "payload": dict}


def test_qdrant_sink_form():
    """Settings from README produce exactly the Qdrant Kafka sink's message form."""
    s = OutputSettings.model_validate({
        "id_field": "id", "vector_field": "vector", "include_model": False, "payload_field": "payload",
        "payload_fields": "title,lang", "extra": {"collection_name": "docs"},
    })
    enc = OutputEncoder(s, "m", 4)
    vec = np.ones((1, 4), np.float32)
    doc = orjson.loads(enc.values([OutputRecord(0, "d1", payload={"title": "T", "lang": "en"})], vec)[0])
    assert set(doc) == set(QDRANT_FORM)
    for k, t in QDRANT_FORM.items():
        assert isinstance(doc[k], t), k
    assert doc["collection_name"] == "docs" and doc["payload"] == {"title": "T", "lang": "en"}
    assert len(doc["vector"]) == 4 and all(isinstance(x, float) for x in doc["vector"])


def test_payload_at_top_level_for_a_dense_vector_sink():
    s = OutputSettings.model_validate({"vector_field": "text_vector", "include_model": False,
                                       "payload_fields": ["title"], "payload_text": True})
    doc = orjson.loads(OutputEncoder(s, "m", 2).values(
        [OutputRecord(0, 5, payload={"title": "T", "text": "hello"})], np.zeros((1, 2), np.float32))[0])
    assert doc == {"id": 5, "text_vector": [0.0, 0.0], "title": "T", "text": "hello"}


def test_decoder_keeps_payload_fields():
    dec = InputDecoder(InputSettings(), keep_fields=["title", "missing"])
    out = dec.decode([b'{"id": 1, "text": "t", "title": "T", "other": 2}'], [None], [("t", 0, 0)])
    assert out.fields == [{"title": "T"}]


def test_chunk_ids():
    assert chunk_ident("{id}#{n}", "doc", 3) == "doc#3"
    a, b = chunk_ident("{uuid}", "doc", 0), chunk_ident("{uuid}", "doc", 1)
    assert a != b and len(a) == 36 and a == chunk_ident("{uuid}", "doc", 0)


def test_dead_letter_keeps_small_values_and_omits_huge_ones():
    value, headers = dead_letter(b"abc", Reason.INVALID_JSON, "bad", "t", 1, 9, max_value_bytes=10)
    h = dict(headers)
    assert value == b"abc" and h["error-type"] == b"invalid_json" and h["source-offset"] == b"9"
    assert "error-value-omitted" not in h
    value, headers = dead_letter(b"x" * 11, Reason.TOO_LARGE, "big", "t", 1, 9, max_value_bytes=10)
    assert value is None and dict(headers)["error-value-omitted"] == b"11"


def _current_form(ident, vector, model="m/x", dim=768):
    """The JSON output as the worker has always written it: orjson's text of the float32 row."""
    return (b'{"id":' + orjson.dumps(ident) + b',"embedding":' + orjson.dumps(vector, option=orjson.OPT_SERIALIZE_NUMPY)
            + b',"model":' + orjson.dumps(model) + b',"dim":' + str(dim).encode() + b"}")


def _assert_shortest_float32_text(value: bytes, vector: np.ndarray) -> None:
    """Each number is the shortest decimal that reads back as the same float32 (what numpy's unique repr
    finds, written independently of orjson)."""
    body = value[value.index(b'"embedding":[') + 13:]
    tokens = body[:body.index(b"]")].split(b",")
    assert len(tokens) == len(vector)
    for tok, v in zip(tokens, vector.tolist(), strict=True):
        f = np.float32(v)
        assert np.float32(float(tok)) == f, (tok, v)
        mantissa = np.format_float_scientific(f, unique=True).split("e")[0].lstrip("-").replace(".", "")
        digits = tok.lstrip(b"-").split(b"e")[0].replace(b".", b"").lstrip(b"0").rstrip(b"0") or b"0"
        assert len(digits) == len(mantissa.rstrip("0") or "0"), (tok, v)


def test_json_output_is_byte_for_byte_the_current_form_on_a_large_random_batch():
    rng = np.random.default_rng(16)
    vecs = rng.normal(size=(300, 768)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs[0, :8] = [0.0, -0.0, 1e-45, -3.4e38, 1e-7, 123456.79, 0.1, 1.0]  # subnormal, huge, tiny, exact
    vecs[1] = rng.uniform(-1e6, 1e6, 768).astype(np.float32)
    vecs[2] = (rng.normal(size=768) * 1e-30).astype(np.float32)
    ids = [f"doc-{i}" if i % 3 else i for i in range(len(vecs))]
    values = OutputEncoder(OutputSettings(), "m/x", 768).values(records(ids), vecs)
    assert values == [_current_form(i, v) for i, v in zip(ids, vecs, strict=True)]
    for value, v in zip(values[:40], vecs[:40], strict=True):
        _assert_shortest_float32_text(value, v)


def test_json_output_is_byte_for_byte_the_current_form_on_a_real_batch(model_factory):
    from modelfactory import sample_texts
    from worker.encoder import Encoder
    from worker.model import load_model

    texts = sample_texts(512, seed=16)
    vecs = Encoder(load_model(model_factory("unigram", dim=64))).encode_batch(texts).vectors
    values = OutputEncoder(OutputSettings(), "m/x", 64).values(records(texts), vecs)
    assert values == [_current_form(t, v, dim=64) for t, v in zip(texts, vecs, strict=True)]
    for value, v in zip(values, vecs, strict=True):
        _assert_shortest_float32_text(value, v)

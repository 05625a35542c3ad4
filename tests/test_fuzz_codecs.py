"""Fuzzed output codecs (worker.codecs.OutputEncoder) on any float32 vector, NaN, ±Inf and subnormals included,
and the pipeline on a model whose table is corrupt.

JSON values are strict JSON (no NaN or Infinity literal) whose finite numbers read back as the same float32, bit
for bit; f32 values are the float32 bits; float16 and int8 read back within their documented precision. A vector
that is not finite (what a corrupt table gives) is never published: its input is dead-lettered as encode_error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fuzzkit import TEXT, FakeMessage, corrupt_model, fuzz, offline_pipeline, process
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelfactory import WORDS
from worker.codecs import OutputEncoder, OutputRecord, Reason, dequantize
from worker.encoder import Encoder
from worker.model import load_model
from worker.pipeline import Pipeline
from worker.settings import OutputFormat, OutputSettings, Settings

F32 = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN, Inf and overflow are what is fed here
SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38,
                           -3.4028235e38, 65504.0, 65520.0, 1e-8])


@st.composite
def matrices(draw, finite: bool = False) -> np.ndarray:
    """float32 [n, dim]: drawn floats, or any 32-bit pattern (NaNs with payloads, as a corrupt file holds)."""
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 24)))
    if not finite and draw(st.booleans()):
        return draw(hnp.arrays(np.uint32, shape)).view(np.float32)
    elements = st.floats(width=32, allow_nan=False, allow_infinity=False) if finite else st.one_of(F32, SPECIAL)
    return draw(hnp.arrays(np.float32, shape, elements=elements))


def _no_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON literal {name}")


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def records(n: int) -> list[OutputRecord]:
    return [OutputRecord(i, f"doc-{i}", payload={"title": "t"}) for i in range(n)]


@fuzz(300)
@given(vecs=matrices())
def test_json_is_strict_and_finite_numbers_read_back_bit_for_bit(vecs):
    settings = OutputSettings(payload_fields=["title"], extra={"collection_name": "c"})
    values = OutputEncoder(settings, "m", vecs.shape[1]).values(records(len(vecs)), vecs)
    for i, (value, vec) in enumerate(zip(values, vecs, strict=True)):
        doc = json.loads(value, parse_constant=_no_constant)
        assert doc["id"] == f"doc-{i}" and doc["title"] == "t" and doc["collection_name"] == "c"
        emb = doc["embedding"]
        assert len(emb) == len(vec) and doc["dim"] == len(vec)
        finite = np.isfinite(vec)
        back = np.array([x if x is not None else np.nan for x in emb], dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(bits(back[finite]), bits(vec[finite]))  # -0.0 and subnormals too
        # orjson writes what has no JSON number as null; the pipeline never publishes it (test below)
        assert all(emb[j] is None for j in np.flatnonzero(~finite).tolist())


@fuzz(200)
@given(vecs=matrices())
def test_f32_carries_the_bits(vecs):
    recs = records(len(vecs))
    enc = OutputEncoder(OutputSettings(format=OutputFormat.f32), "m", vecs.shape[1])
    values = enc.values(recs, vecs)
    assert all(len(v) == 4 * vecs.shape[1] for v in values)
    np.testing.assert_array_equal(bits(np.vstack([dequantize(v, "float32") for v in values])), bits(vecs))
    assert dict(enc.extra_headers("doc-0")) == {"id": b"doc-0", "model": b"m", "dim": str(vecs.shape[1]).encode(),
                                                 "dtype": b"float32"}


@fuzz(200)
@given(vecs=matrices(finite=True), dtype=st.sampled_from(["float16", "int8"]))
def test_compact_binary_read_back_within_their_precision(vecs, dtype):
    recs = records(len(vecs))
    values = OutputEncoder(OutputSettings(format=OutputFormat.binary, dtype=dtype), "m", vecs.shape[1]).values(
        recs, vecs)
    for r, value, vec in zip(recs, values, vecs, strict=True):
        if dtype == "float16":
            # the nearest float16: exact for what float16 holds; beyond ±65504 it is ±inf (a normalized vector
            # never is; an unnormalized model with such values should use f32)
            np.testing.assert_array_equal(dequantize(value, dtype), vec.astype(np.float16).astype(np.float32))
            continue
        if np.abs(vec).max() > 1e38:
            continue  # 127 * scale would pass float32's maximum when read back: no embedding is near it
        scale = float(dict(r.headers)["scale"])
        assert np.isfinite(scale) and scale > 0
        back = dequantize(value, dtype, scale)
        assert np.all(np.abs(back.astype(np.float64) - vec) <= scale * 0.5 * (1 + 1e-5) + 1e-45), (vec, back, scale)


# ---- the pipeline on a corrupt table -----------------------------------------------------------------------

# rows a corrupt file could hold: NaN, ±Inf, a float32 maximum (two of them sum to Inf), subnormals
CORRUPT = {"fox": np.nan, "dog": np.inf, "lazy": -np.inf, "kafka": 3.4e38, "vectors": 3.4e38, "chien": 1e-45}


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> Path:
    return corrupt_model(tmp_path_factory.mktemp("corrupt"), "wordpiece", CORRUPT)


TEXTS = st.lists(st.one_of(st.sampled_from([w for ws in WORDS.values() for w in ws]), TEXT), min_size=1,
                 max_size=6).map(" ".join)


@pytest.fixture(scope="module")
def corrupt_pipeline(corrupt):
    """(format, normalize) -> the worker's pipeline on fake clients, over the corrupt model."""
    pipes: dict[tuple[str, bool], Pipeline] = {}

    def get(fmt: str, normalize: bool) -> Pipeline:
        if (fmt, normalize) not in pipes:
            out: dict = {"format": fmt} if fmt in ("json", "f32", "avro", "protobuf") else \
                {"format": "json", "schema_envelope": True} if fmt == "envelope" else {"format": "binary", "dtype": fmt}
            encoder = Encoder(load_model(corrupt), normalize=normalize)
            pipes[(fmt, normalize)] = offline_pipeline(
                Settings(output=out, schema_registry={"url": "mock://fuzz"}), encoder)
        return pipes[(fmt, normalize)]

    return get


@pytest.mark.parametrize("fmt", ["json", "f32", "int8", "float16", "avro", "protobuf", "envelope"])
@pytest.mark.parametrize("normalize", [True, False])
@fuzz(40)
@given(texts=st.lists(TEXTS, min_size=1, max_size=8))
def test_a_vector_that_is_not_finite_is_dead_lettered_never_published(corrupt_pipeline, fmt, normalize, texts):
    pipe = corrupt_pipeline(fmt, normalize)
    vectors = pipe.encoder.encode(texts)
    with np.errstate(over="ignore"):
        finite = np.isfinite(vectors.astype(np.float16) if fmt == "float16" else vectors).all(axis=1)
    by_input, _ = process(pipe, [FakeMessage(json.dumps({"id": i, "text": t}).encode(), offset=i)
                                 for i, t in enumerate(texts)])
    for (_, offset), recs in by_input.items():
        text = texts[offset]
        if not text.strip():
            continue  # an empty text: its own dead letter
        if not finite[offset]:
            assert len(recs) == 1 and recs[0][0] == pipe.s.dlq_topic, f"{text!r}: a non-finite vector published"
            headers = dict(recs[0][3])
            assert headers["error-type"] == Reason.ENCODE_ERROR.encode() and b"not finite" in headers["error-message"]
            continue
        [(topic, _, value, headers)] = recs
        assert topic == pipe.s.output_topic and value is not None
        if fmt == "json":
            back = np.array(json.loads(value, parse_constant=_no_constant)["embedding"], dtype=np.float32)
        elif fmt == "envelope":
            back = np.array(json.loads(value, parse_constant=_no_constant)["payload"]["embedding"], np.float32)
        elif fmt in ("avro", "protobuf"):
            back = schema_vector(pipe, fmt, value)
        else:
            back = dequantize(value, "float32" if fmt == "f32" else fmt, float(dict(headers).get("scale", b"1")))
        assert np.isfinite(back).all(), (text, back)


def schema_vector(pipe: Pipeline, fmt: str, value: bytes) -> np.ndarray:
    """The vector of an avro or protobuf output, read back by confluent-kafka's deserializer."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    ctx = SerializationContext(pipe.s.output_topic, MessageField.VALUE)
    writer = pipe.assembler.outputs.writer
    if fmt == "avro":
        return np.array(AvroDeserializer(pipe.assembler.registry_client)(value, ctx)["embedding"], np.float32)
    msg = ProtobufDeserializer(writer.message_class, {"use.deprecated.format": False})(value, ctx)
    return np.array(list(msg.embedding), np.float32)

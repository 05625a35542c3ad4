"""Fuzzed micro-batches through Pipeline.process (decode, encode, format, assemble; fake Kafka clients): every input
is either published (its outputs only) or dead-lettered (one record), each offset exactly once, and the counts the
offset tracker and the metrics get reconcile: len(batch) == published + dead-lettered.

Batches mix good JSON or text, tombstones, random bytes, oversized values, empty texts, nesting orjson cannot
write back, a text the encoder raises on, a text whose vector is NaN (a corrupt table row), large keys and headers
(outputs over the record limit), on several partitions, with chunking, payloads and binary formats. Avro and
Protobuf input: records from confluent-kafka's serializers (mock registry), cut short, with a byte flipped, a wrong
magic byte or an unknown schema id, and raw bytes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fuzzkit import TEXT, FakeMessage, corrupt_model, dead_letter_reason, fuzz, offline_pipeline, process
from hypothesis import given
from hypothesis import strategies as st

from modelfactory import WORDS
from worker.codecs import Reason, dequantize
from worker.encoder import Encoded, Encoder
from worker.model import load_model
from worker.outputs import record_size
from worker.pipeline import Pipeline
from worker.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the NaN row of the corrupt table
REASONS = {v for k, v in vars(Reason).items() if k.isupper()}
BOOM = "\x07boom"  # the encoder raises on a batch holding this text
SETTINGS: dict[str, dict] = {
    "json-payload": {"output": {"payload_fields": ["meta"]}, "input": {"max_bytes": 2000}},
    "chunks-document": {"chunking": {"mode": "words", "size": 4, "overlap": 1, "document_vector": True},
                        "output": {"payload_field": "payload", "payload_fields": ["meta"], "payload_text": True}},
    "text-tokens-int8": {"input": {"format": "text"}, "chunking": {"mode": "tokens", "size": 3},
                         "output": {"format": "binary", "dtype": "int8"}},
    "small-records-f32": {"kafka": {"producer_config": {"message.max.bytes": "3500"}}, "output": {"format": "f32"},
                          "input": {"max_bytes": 1500, "dead_letter_max_value_bytes": 1000,
                                    "empty_text": "zero_vector"}},
}


class Flaky(Encoder):
    def encode_batch(self, texts) -> Encoded:
        if any(BOOM in t for t in texts):
            raise RuntimeError("the encoder failed")
        return super().encode_batch(texts)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    folder = corrupt_model(tmp_path_factory.mktemp("batch"), "wordpiece", {"fox": np.nan})
    made: dict[str, Pipeline] = {}

    def get(name: str) -> Pipeline:
        if name not in made:
            made[name] = offline_pipeline(Settings(**SETTINGS[name]), Flaky(load_model(Path(folder))))
        return made[name]

    return get


WORD = st.sampled_from([w for ws in WORDS.values() for w in ws])
PROSE = st.lists(WORD, min_size=1, max_size=30).map(" ".join)
TEXTS = st.one_of(TEXT, PROSE, TEXT, PROSE, st.just("the quick fox"), st.sampled_from(["", "  ", "\n", BOOM]))
META = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just([[[[1]]]]))


@st.composite
def value(draw) -> bytes | None:
    kind = draw(st.sampled_from(["json"] * 6 + ["text", "none", "bytes", "big", "deep"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "big":
        return b'{"text": "' + b"big " * draw(st.integers(300, 600)) + b'"}'
    if kind == "deep":  # orjson reads it, cannot write it back: once a TypeError out of the batch, every restart
        return b'{"text": "a", "meta": ' + b"[" * 300 + b"]" * 300 + b"}"
    text = draw(TEXTS)
    if kind == "text":
        return text.encode()
    doc = {"text": text, "meta": draw(META)}
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.integers(), st.text(max_size=8)))
    return json.dumps(doc).encode()


HEADERS = st.one_of(st.none(), st.lists(st.tuples(st.sampled_from(["trace", "source-offset", "h"]),
                                                  st.binary(max_size=8) | st.binary(min_size=3000, max_size=3000)),
                                        max_size=2))
KEY = st.one_of(st.none(), st.binary(max_size=16), st.binary(min_size=3000, max_size=3000))


@st.composite
def batch(draw) -> list[FakeMessage]:
    n = draw(st.integers(1, 12))
    next_offset = {p: draw(st.integers(0, 10**12)) for p in range(3)}
    msgs = []
    for _ in range(n):
        p = draw(st.integers(0, 2))
        next_offset[p] += draw(st.integers(1, 3))  # offsets grow per partition, with gaps (compaction)
        msgs.append(FakeMessage(draw(value()), draw(KEY), p, next_offset[p], draw(HEADERS)))
    return msgs


@pytest.mark.parametrize("name", list(SETTINGS))
@fuzz(100)
@given(msgs=batch())
def test_every_input_is_published_or_dead_lettered_once_and_counts_reconcile(pipelines, name, msgs):
    pipe = pipelines(name)
    dead_before = sum(s.value for m in pipe.metrics.dead_lettered.collect() for s in m.samples
                      if s.name.endswith("_total"))
    by_input, pending = process(pipe, msgs)  # checks: each input's records are outputs only, or one dead letter
    reasons = {where: dead_letter_reason(recs) for where, recs in by_input.items()}
    published = sum(r is None for r in reasons.values())
    dead = Counter(r for r in reasons.values() if r is not None)
    assert published + sum(dead.values()) == len(msgs)
    assert set(dead) <= REASONS, dead
    assert pending is not None, "the batch is registered for its offsets"
    assert pending.produced == published
    assert pending.outstanding == sum(len(recs) for recs in by_input.values())
    assert pending.counts == dict(Counter((m.topic(), m.partition()) for m in msgs))
    assert pending.next_offsets == {(m.topic(), m.partition()): m.offset() + 1 for m in msgs}
    dead_after = sum(s.value for m in pipe.metrics.dead_lettered.collect() for s in m.samples
                     if s.name.endswith("_total"))
    assert dead_after - dead_before == sum(dead.values())
    for where, recs in by_input.items():
        for _, key, val, headers in recs:
            assert record_size(key, val, headers) <= pipe.max_record, f"input {where}: a record over the limit"
    _check_expected_outcomes(pipe, msgs, by_input)
    _check_chunks(pipe, by_input)
    _check_values(pipe, by_input)


def _check_expected_outcomes(pipe: Pipeline, msgs: list[FakeMessage], by_input: dict) -> None:
    """Each input's fate, from the decoder's verdict (fuzzed on its own in test_fuzz_decoder.py): a bad input is
    dead-lettered with the decoder's reason; a good one is published, or dead-lettered as encode_error (the encoder
    raised: then for the whole batch; or its vector is not finite) or too_large (key and headers too big)."""
    dec = pipe.decoder.decode([m.value() for m in msgs], [m.key() for m in msgs],
                              [(m.topic(), m.partition(), m.offset()) for m in msgs])
    reasons = [dead_letter_reason(by_input[(m.partition(), m.offset())]) for m in msgs]
    messages = [dict(by_input[(m.partition(), m.offset())][0][3]).get("error-message", b"") for m in msgs]
    for i, reason, _ in dec.bad:
        assert reasons[i] == reason, (msgs[i], reasons[i], reason)
    for i in dec.good:
        assert reasons[i] in (None, Reason.ENCODE_ERROR, Reason.TOO_LARGE), (msgs[i], reasons[i])
    raised = [i for i in dec.good if messages[i].startswith(b"RuntimeError")]
    if raised or (pipe.s.chunking.mode == "off" and any(BOOM in t for t in dec.texts)):
        assert raised == dec.good, "the encoder raised: every text of the batch is dead-lettered"


def _check_values(pipe: Pipeline, by_input: dict) -> None:
    """What is published reads back as a finite vector of the model's dimension: strict JSON, or float32/int8."""
    fmt = pipe.s.output.binary_dtype
    for recs in by_input.values():
        if dead_letter_reason(recs) is not None:
            continue
        for _, _, val, headers in recs:
            if fmt is None:
                vec = np.array(json.loads(val, parse_constant=_refuse)["embedding"], dtype=np.float32)
            else:
                vec = dequantize(val, fmt, float(dict(headers).get("scale", b"1")))
            assert vec.shape == (pipe.encoder.dim,) and np.isfinite(vec).all(), vec


def _refuse(name: str) -> None:
    raise AssertionError(f"non-standard JSON literal {name}")


def _check_chunks(pipe: Pipeline, by_input: dict) -> None:
    """A chunked input: chunks 0..count-1, each once, then its document vector (when asked for)."""
    for where, recs in by_input.items():
        if dead_letter_reason(recs) is not None:
            continue
        kinds = [dict(r[3]).get("chunk-kind") for r in recs]
        if kinds == [None]:
            continue  # one output: no chunking, or a text that fits in one chunk
        chunks = [dict(r[3]) for r in recs if dict(r[3]).get("chunk-kind") == b"chunk"]
        count = int(chunks[0]["chunk-count"])
        assert sorted(int(h["chunk-index"]) for h in chunks) == list(range(count)), where
        assert kinds.count(b"document") == (1 if pipe.s.chunking.document_vector else 0), where


# ---- avro and protobuf input: registry-framed records, good and broken ----

AVRO_IN = {"type": "record", "name": "In", "namespace": "fuzz", "fields": [
    {"name": "id", "type": ["null", "long", "string"]}, {"name": "text", "type": ["null", "string"]},
    {"name": "meta", "type": ["null", "string", "long", {"type": "array", "items": "long"}]}]}


def _proto_in() -> type:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="fuzz/in.proto", package="fuzz", syntax="proto3")
    msg = fdp.message_type.add(name="In")
    msg.field.add(name="id", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    msg.field.add(name="text", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    msg.field.add(name="meta", number=3, type=fd.TYPE_INT64, label=fd.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fuzz.In"))


@st.composite
def framed(draw) -> tuple[str, object]:
    """What to send: a good record (id, text, meta) to serialize, maybe broken afterwards, or raw bytes."""
    kind = draw(st.sampled_from(["good"] * 6 + ["cut", "flip", "magic", "unknown", "bytes", "none", "short"]))
    if kind in ("bytes", "none", "short"):
        return kind, draw(st.binary(max_size=40)) if kind == "bytes" else draw(st.binary(max_size=4))
    ident = draw(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=8)))
    meta = draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=3))
    return kind, (ident, draw(TEXTS), meta, draw(st.integers(0, 10**6)))


def _value(fmt: str, ser, cls, spec: tuple[str, object]) -> bytes | None:
    from confluent_kafka.serialization import MessageField, SerializationContext

    kind, data = spec
    if kind == "none":
        return None
    if kind in ("bytes", "short"):
        return data  # type: ignore[return-value]
    ident, text, meta, r = data  # type: ignore[misc]
    ctx = SerializationContext("texts", MessageField.VALUE)
    if fmt == "avro":
        value = ser({"id": ident, "text": text, "meta": meta or None}, ctx)
    else:
        value = ser(cls(id=str(ident) if ident is not None else "", text=text, meta=meta), ctx)
    if kind == "cut":
        return value[:r % len(value)]
    if kind == "flip":
        k = 5 + r % (len(value) - 5)
        return value[:k] + bytes([value[k] ^ (1 + r % 255)]) + value[k + 1:]
    if kind == "magic":
        return bytes([1 + r % 255]) + value[1:]
    return value[:1] + (10**6 + r).to_bytes(4, "big") + value[5:] if kind == "unknown" else value


@pytest.fixture(scope="module")
def registry_pipelines(tmp_path_factory):
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

    folder = corrupt_model(tmp_path_factory.mktemp("registry"), "wordpiece", {"fox": np.nan})
    made = {}
    for fmt in ("avro", "protobuf"):
        s = Settings(input={"format": fmt}, schema_registry={"url": f"mock://fuzz-{fmt}"},
                     output={"payload_fields": ["meta"]})
        pipe = offline_pipeline(s, Flaky(load_model(Path(folder))))
        client = pipe.gate.reader.client
        cls = _proto_in()
        ser = (AvroSerializer(client, json.dumps(AVRO_IN)) if fmt == "avro" else
               ProtobufSerializer(cls, client, {"use.deprecated.format": False}))
        made[fmt] = (pipe, ser, cls)
    return made


@pytest.mark.parametrize("fmt", ["avro", "protobuf"])
@fuzz(80)
@given(specs=st.lists(framed(), min_size=1, max_size=12), partitions=st.lists(st.integers(0, 2), min_size=12,
                                                                             max_size=12))
def test_registry_input_every_record_is_published_or_dead_lettered_once(registry_pipelines, fmt, specs, partitions):
    pipe, ser, cls = registry_pipelines[fmt]
    msgs = [FakeMessage(_value(fmt, ser, cls, spec), partition=partitions[i], offset=i) for i, spec in enumerate(specs)]
    dead_before = sum(s.value for m in pipe.metrics.dead_lettered.collect() for s in m.samples
                      if s.name.endswith("_total"))
    by_input, pending = process(pipe, msgs)
    reasons = {where: dead_letter_reason(recs) for where, recs in by_input.items()}
    published = sum(r is None for r in reasons.values())
    dead = Counter(r for r in reasons.values() if r is not None)
    assert published + sum(dead.values()) == len(msgs) and set(dead) <= REASONS, dead
    assert pending is not None and pending.produced == published
    dead_after = sum(s.value for m in pipe.metrics.dead_lettered.collect() for s in m.samples
                     if s.name.endswith("_total"))
    assert dead_after - dead_before == sum(dead.values())
    _check_expected_outcomes(pipe, msgs, by_input)
    _check_values(pipe, by_input)
    for msg, spec in zip(msgs, specs, strict=True):
        reason = reasons[(msg.partition(), msg.offset())]
        if spec[0] == "unknown":
            assert reason == Reason.UNKNOWN_SCHEMA
        elif spec[0] in ("magic", "short"):
            assert reason == Reason.INVALID_FRAMING
        elif spec[0] == "good":
            assert reason in (None, Reason.EMPTY_TEXT, Reason.ENCODE_ERROR, Reason.NON_STRING_TEXT), reason

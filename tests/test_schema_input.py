"""Avro and Protobuf input (worker.schema_input), offline on confluent-kafka's mock registry: values written by its
AvroSerializer and ProtobufSerializer decode to their text, id and payload fields; each new dead-letter type; one
registry fetch per schema id; and the pipeline holding a batch (paused, still polling, not ready) while the registry
cannot be asked, then processing it once, nothing dead-lettered."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from worker.codecs import InputDecoder, Reason
from worker.schema_input import NEGATIVE_TTL_S, SchemaReader, frame
from worker.settings import InputFormat, InputSettings, Settings, SettingsError, load_settings

TOPIC = "texts"
CTX = SerializationContext(TOPIC, MessageField.VALUE)
AVRO_DOC = {"type": "record", "name": "Doc", "namespace": "acme", "fields": [
    {"name": "id", "type": ["null", "long", "string"], "default": None},
    {"name": "text", "type": ["null", "string"], "default": None},
    {"name": "title", "type": ["null", "string"], "default": None},
    {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
    {"name": "blob", "type": "bytes", "default": ""},
]}
AVRO_NO_TEXT = {"type": "record", "name": "Other", "fields": [{"name": "body", "type": "string"}]}
AVRO_INT_TEXT = {"type": "record", "name": "IntText", "fields": [{"name": "text", "type": "int"}]}


def rec(**fields: Any) -> dict[str, Any]:
    """An AVRO_DOC record, its defaults filled (the serializer does not)."""
    return {"id": None, "text": None, "title": None, "tags": [], "blob": b"", **fields}


def client(name: str) -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://{name}"})


def avro_serializer(c: Any, schema: dict[str, Any], subject: str = "texts-value") -> Any:
    return AvroSerializer(c, json.dumps(schema), conf={"subject.name.strategy": lambda ctx, name: subject})


def proto_classes() -> dict[str, Any]:
    """A proto3 file with two top-level messages (the second has a nested one): message indexes [0], [1], [1, 0]."""
    fd = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="acme/docs.proto", package="acme", syntax="proto3")
    first = fdp.message_type.add(name="Doc")
    first.field.add(name="id", number=1, type=fd.TYPE_INT64, label=fd.LABEL_OPTIONAL)
    first.field.add(name="text", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    title = first.field.add(name="title", number=3, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL,
                            proto3_optional=True, oneof_index=0)
    first.oneof_decl.add(name="_" + title.name)
    first.field.add(name="tags", number=4, type=fd.TYPE_STRING, label=fd.LABEL_REPEATED)
    first.field.add(name="blob", number=5, type=fd.TYPE_BYTES, label=fd.LABEL_OPTIONAL)
    second = fdp.message_type.add(name="Page")
    second.field.add(name="id", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    second.field.add(name="text", number=2, type=fd.TYPE_INT32, label=fd.LABEL_OPTIONAL)
    nested = second.nested_type.add(name="Line")
    nested.field.add(name="id", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    nested.field.add(name="text", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"acme.{name}"))
            for name in ("Doc", "Page", "Page.Line")}


def proto_serializer(c: Any, cls: Any) -> Any:
    return ProtobufSerializer(cls, c, conf={"use.deprecated.format": False,
                                            "subject.name.strategy": lambda ctx, name: f"{TOPIC}-{name}"})


def decoder(fmt: str, c: Any, keep: tuple[str, ...] = ("title", "tags", "blob"), **input_: Any) -> InputDecoder:
    settings = InputSettings(format=fmt, **input_)
    return InputDecoder(settings, keep, schemas=SchemaReader(InputFormat(fmt), settings, keep, c))


def decode(dec: InputDecoder, values: list[bytes | None], keys: list[bytes | None] | None = None) -> Any:
    return dec.decode(values, keys or [None] * len(values), [(TOPIC, 0, i) for i in range(len(values))])


def reasons(d: Any) -> dict[int, str]:
    return {i: r for i, r, _ in d.bad}


# ---- round trips with confluent-kafka's serializers ----

def test_avro_from_the_serializer_decodes_to_text_id_and_payload():
    c = client("avro-rt")
    ser = avro_serializer(c, AVRO_DOC)
    docs = [{"id": 7, "text": "the quick fox", "title": "T", "tags": ["a", "b"], "blob": b"\x00\xff"},
            {"id": "doc-2", "text": "東京 🙂", "title": None, "tags": [], "blob": b""},
            {"id": None, "text": "no id: the key names it"}]
    values = [ser(rec(**d), CTX) for d in docs]
    d = decode(decoder("avro", c), values, [None, None, b"key-3"])
    assert d.bad == [] and d.good == [0, 1, 2]
    assert d.ids == [7, "doc-2", "key-3"] and d.texts == [doc["text"] for doc in docs]
    assert d.fields[0] == {"title": "T", "tags": ["a", "b"], "blob": "\x00\xff"}  # bytes: Avro's JSON encoding
    assert d.fields[1] == {"title": None, "tags": [], "blob": ""}
    theirs = [AvroDeserializer(c)(v, CTX) for v in values]  # what confluent-kafka's deserializer reads
    assert [t["text"] for t in theirs] == d.texts and [t["id"] for t in theirs][:2] == d.ids[:2]


def test_protobuf_from_the_serializer_decodes_with_its_message_indexes():
    c = client("proto-rt")
    cls = proto_classes()
    doc = proto_serializer(c, cls["Doc"])(cls["Doc"](id=12, text="hello", title="T", tags=["x"], blob=b"\x01"), CTX)
    bare = proto_serializer(c, cls["Doc"])(cls["Doc"](text="no title, no id"), CTX)
    line = proto_serializer(c, cls["Page.Line"])(cls["Page.Line"](id="l-1", text="a nested message"), CTX)
    assert doc[5] == 0 and frame(line, True)[1] == (1, 0)  # message indexes as the serializer wrote them
    d = decode(decoder("protobuf", c), [doc, bare, line], [None, b"k", None])
    assert d.bad == []
    assert d.ids == [12, 0, "l-1"]  # proto3: an unset int64 reads 0; an unset string id falls back to the key
    assert d.texts == ["hello", "no title, no id", "a nested message"]
    assert d.fields[0] == {"title": "T", "tags": ["x"], "blob": "AQ=="}  # bytes as protobuf's JSON mapping (base64)
    assert d.fields[1] == {"tags": [], "blob": ""}  # an unset optional field is absent, as a missing JSON key
    theirs = ProtobufDeserializer(cls["Doc"], {"use.deprecated.format": False})(doc, CTX)
    assert (theirs.id, theirs.text, theirs.title, list(theirs.tags)) == (12, "hello", "T", ["x"])


# ---- dead letters ----

def test_each_new_dead_letter_type_avro():
    c = client("avro-bad")
    good = avro_serializer(c, AVRO_DOC)(rec(id=1, text="fine"), CTX)
    no_text = avro_serializer(c, AVRO_NO_TEXT, "other-value")({"body": "x"}, CTX)
    int_text = avro_serializer(c, AVRO_INT_TEXT, "int-value")({"text": 3}, CTX)
    null_text = avro_serializer(c, AVRO_DOC)(rec(id=2), CTX)
    empty = avro_serializer(c, AVRO_DOC)(rec(id=3, text="  "), CTX)
    unknown = good[:1] + (999).to_bytes(4, "big") + good[5:]
    values = [good, b"\x00\x00\x01", b"\x01" + good[1:], json.dumps({"text": "json"}).encode(), unknown,
              good[:7], good[:5] + b"\x07" + good[6:], no_text, int_text, null_text, empty, None]
    d = decode(decoder("avro", c), values)
    assert d.good == [0]
    assert reasons(d) == {1: Reason.INVALID_FRAMING, 2: Reason.INVALID_FRAMING, 3: Reason.INVALID_FRAMING,
                          4: Reason.UNKNOWN_SCHEMA, 5: Reason.INVALID_RECORD, 6: Reason.INVALID_RECORD,
                          7: Reason.MISSING_TEXT, 8: Reason.NON_STRING_TEXT, 9: Reason.NON_STRING_TEXT,
                          10: Reason.EMPTY_TEXT, 11: Reason.NULL_VALUE}
    messages = {i: m for i, _, m in d.bad}
    assert "magic byte is 1" in messages[2] and "schema id 999" in messages[4] and "404" in messages[4]


def test_each_new_dead_letter_type_protobuf():
    c = client("proto-bad")
    cls = proto_classes()
    good = proto_serializer(c, cls["Doc"])(cls["Doc"](id=1, text="fine"), CTX)
    int_text = proto_serializer(c, cls["Page"])(cls["Page"](id="p", text=5), CTX)
    empty = proto_serializer(c, cls["Doc"])(cls["Doc"](id=2), CTX)  # proto3: an unset text reads ""
    schema_id = frame(good, True)[0]
    bad_index = good[:5] + b"\x02\x0e" + good[6:]  # one index, 7: the file has two messages
    cut_indexes = good[:5] + b"\x04\x02"  # says two indexes, holds one
    undecodable = good[:6] + b"\x12\x40abc"  # field 2, length 64, 3 bytes
    avro_id = avro_serializer(c, AVRO_DOC, "avro-value")(rec(text="an avro record"), CTX)
    unknown = good[:1] + (4242).to_bytes(4, "big") + good[5:]
    values = [good, b"\x00\x00", b"\x05" + good[1:], bad_index, cut_indexes, undecodable, unknown, avro_id,
              int_text, empty]
    d = decode(decoder("protobuf", c), values)
    assert d.good == [0], d.bad
    assert reasons(d) == {1: Reason.INVALID_FRAMING, 2: Reason.INVALID_FRAMING, 3: Reason.INVALID_FRAMING,
                          4: Reason.INVALID_FRAMING, 5: Reason.INVALID_RECORD, 6: Reason.UNKNOWN_SCHEMA,
                          7: Reason.INVALID_RECORD, 8: Reason.NON_STRING_TEXT, 9: Reason.EMPTY_TEXT}
    messages = {i: m for i, _, m in d.bad}
    assert "is a AVRO schema" in messages[7] and f"schema id {schema_id}" in messages[3]
    # a text field that is missing from the message type altogether
    d = decode(decoder("protobuf", c, text_field="body"), [good])
    assert reasons(d) == {0: Reason.MISSING_TEXT}


# ---- the registry: one fetch per id, 404s remembered for a while ----

class Counting:
    """A registry client that counts get_schema calls and can fail like an unreachable registry."""

    def __init__(self, inner: Any, failures: int = 0, error: BaseException | None = None) -> None:
        self.inner = inner
        self.calls = 0
        self.failures = failures
        self.error = error or SchemaRegistryError(503, 50301, "unavailable")

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self.inner.get_schema(schema_id, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_one_fetch_per_schema_id_and_404s_are_asked_again_after_a_while():
    c = client("cache")
    a = avro_serializer(c, AVRO_DOC)
    b = avro_serializer(c, AVRO_NO_TEXT, "other-value")
    values = [a(rec(text=f"t{i}"), CTX) for i in range(5)] + [b({"body": "x"}, CTX)] * 3
    unknown = values[0][:1] + (777).to_bytes(4, "big") + values[0][5:]
    counting = Counting(c)
    now = [0.0]
    settings = InputSettings(format="avro")
    reader = SchemaReader(InputFormat.avro, settings, (), counting, clock=lambda: now[0])
    dec = InputDecoder(settings, (), schemas=reader)
    for _ in range(3):
        reader.prefetch(values + [unknown] * 4)
        d = decode(dec, values + [unknown] * 4)
        assert len(d.good) == 5 and len(d.bad) == 7
    assert counting.calls == reader.fetches == 3  # two schemas and the unknown id, once each
    now[0] += NEGATIVE_TTL_S + 1
    reader.prefetch(values + [unknown])
    assert counting.calls == 4  # only the 404 is asked about again


@pytest.mark.parametrize("error", [SchemaRegistryError(503, 50301, "unavailable"), ConnectionError("refused"),
                                   SchemaRegistryError(401, 40101, "unauthorized")])
def test_an_unreachable_registry_raises_and_caches_nothing(error):
    from worker.schema_input import RegistryUnavailable

    c = client("down")
    value = avro_serializer(c, AVRO_DOC)(rec(text="t"), CTX)
    counting = Counting(c, failures=1, error=error)
    reader = SchemaReader(InputFormat.avro, InputSettings(format="avro"), (), counting)
    with pytest.raises(RegistryUnavailable):
        reader.prefetch([value])
    reader.prefetch([value])  # the registry answers now
    assert counting.calls == 2 and reader.read(value)[1] == "t"


def test_registry_input_settings():
    with pytest.raises(SettingsError, match="EMBED_INPUT__FORMAT=avro needs EMBED_SCHEMA_REGISTRY__URL"):
        load_settings(input={"format": "avro"})
    s = load_settings(input={"format": "protobuf"}, schema_registry={"url": "mock://x"})
    assert s.input.format == InputFormat.protobuf


# ---- the pipeline holds the batch while the registry is down ----

class LoopConsumer:
    """The consumer calls Pipeline.run makes: one partition, one batch, pause/resume and readiness recorded."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.batch: list[Any] = []
        self.paused = False
        self.log: list[tuple[bool, bool, str]] = []  # (paused, ready, why) at each consume
        self.pipe: Any = None

    def subscribe(self, topics: list[str], on_assign: Any = None, **_: Any) -> None:
        on_assign(self, [TopicPartition(TOPIC, 0)])

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, 0)]

    def pause(self, parts: list[TopicPartition]) -> None:
        self.paused = True

    def resume(self, parts: list[TopicPartition]) -> None:
        self.paused = False

    def consume(self, n: int, timeout: float) -> list[Any]:
        time.sleep(min(timeout, 0.005))  # a real consume waits while there is nothing
        ready, why = self.pipe.health.ready()
        self.log.append((self.paused, ready, why))
        if self.pipe.producer.sent or len(self.log) > 2000:
            self.pipe.stop()
        if self.paused or not self.batch:
            return []
        out, self.batch = self.batch, []
        return out

    def commit(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def store_offsets(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def test_registry_down_holds_the_batch_then_processes_it_once(monkeypatch, small_model):
    from unittest import mock

    from fuzzkit import FakeMessage, FakeProducer
    from prometheus_client import CollectorRegistry

    import worker.pipeline as pipeline_module
    import worker.registry as registry_module
    from worker.encoder import Encoder
    from worker.metrics import Metrics
    from worker.model import load_model
    from worker.probes import Health

    monkeypatch.setattr(registry_module, "FIRST_RETRY_S", 0.01)
    monkeypatch.setattr(registry_module, "MAX_RETRY_S", 0.04)
    settings = Settings(input={"format": "avro"}, schema_registry={"url": "mock://held"}, shutdown_grace_s=1,
                        metrics={"enabled": False})
    health = Health(60.0)
    health.model_loaded = health.broker_up = True
    with mock.patch.object(pipeline_module, "Consumer", LoopConsumer), \
            mock.patch.object(pipeline_module, "Producer", FakeProducer):
        pipe = pipeline_module.Pipeline(settings, Encoder(load_model(small_model)), "m", Metrics(CollectorRegistry()),
                                        health)
    assert pipe.gate is not None
    inner = pipe.gate.reader.client
    ser = avro_serializer(inner, AVRO_DOC)
    msgs = [FakeMessage(ser(rec(id=i, text=f"text number {i}"), CTX), offset=i) for i in range(20)]
    msgs.append(FakeMessage(b"\x00\x00\x00\x00\x00", offset=20))  # unknown id 0: a dead letter, once registry answers
    counting = Counting(inner, failures=4, error=ConnectionError("connection refused"))
    pipe.gate.reader.client = counting
    consumer = pipe.consumer
    consumer.pipe, consumer.batch = pipe, msgs
    assert pipe.run() == 0
    sent = pipe.producer.sent
    outputs = [r for r in sent if r[0] == settings.output_topic]
    dead = [dict(r[3])["error-type"] for r in sent if r[0] == settings.dlq_topic]
    assert len(outputs) == 20 and dead == [b"unknown_schema"]  # each input once: nothing skipped, nothing doubled
    assert sorted(json.loads(r[2])["id"] for r in outputs) == list(range(20))
    assert counting.calls == 4 + 2  # four failures, then the schema and the unknown id
    assert pipe.gate.failures == 4 and not pipe.gate.waiting and health.registry_down is None
    waiting = [entry for entry in consumer.log if not entry[1]]
    assert len(waiting) >= 4, consumer.log  # kept polling while it waited
    assert all(p and "schema registry unreachable (ConnectionError: connection refused)" in why
               for p, _, why in waiting)
    assert not consumer.paused and consumer.log[-1][1]  # resumed, ready again
    assert pipe.metrics.consumed._value.get() == 21

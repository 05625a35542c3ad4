"""Schema'd outputs (worker.schema_output, worker.schemas, worker.registry), offline on confluent-kafka's mock registry.

The worker frames Avro and Protobuf values itself: here its bytes are compared with confluent-kafka's
AvroSerializer and ProtobufSerializer for the same record (same registry, same subject, so the same schema id), and
decoded with its AvroDeserializer and ProtobufDeserializer. The JSON envelope's schema is checked against its payload.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    SchemaRegistryError,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fuzzkit import fuzz
from hypothesis import given
from hypothesis import strategies as st

from worker.codecs import OutputRecord
from worker.registry import RegistryError, make_client, register, subject_name
from worker.schema_output import make_writer, registry_schema
from worker.schemas import CHUNK_INTS, as_text, avro_schema_str
from worker.settings import OutputFormat, Settings, SettingsError, load_settings

TOPIC = "vectors"
CTX = SerializationContext(TOPIC, MessageField.VALUE)
STRATEGIES = {"topic": topic_subject_name_strategy, "record": record_subject_name_strategy,
              "topic_record": topic_record_subject_name_strategy}

# output settings: the bare record, and every optional field (payload fields, constants, chunk fields, text)
BARE: dict[str, Any] = {"include_model": False}
FULL: dict[str, Any] = {"payload_fields": ["title", "rank"], "payload_text": True,
                        "extra": {"collection": "docs", "shard": -3, "weight": 0.5, "live": True, "none": None}}


def settings(fmt: str, output: dict[str, Any], chunked: bool = False, **registry: Any) -> Settings:
    return Settings(output={"format": fmt, **output}, output_topic=TOPIC,
                    chunking={"mode": "words" if chunked else "off"},
                    schema_registry={"url": "mock://unit", **registry})


def records(n: int, full: bool) -> list[OutputRecord]:
    """Unchunked, chunk and document records; payload values of every JSON type, some missing."""
    out = []
    for i in range(n):
        payload = None
        if full:
            payload = {"title": ["T", None, 7, {"a": [1]}][i % 4], "text": f"text {i} é 東京"}
            if i % 2:
                payload.update(document_id=i * 10, chunk_index=i, chunk_count=n, chunk_start=3 * i, chunk_end=3 * i + 3)
            if i % 3 == 0:
                del payload["title"]
        out.append(OutputRecord(i, [f"id-{i}", i, 2.5, ""][i % 4], payload=payload))
    return out


def reference_object(s: Settings, writer: Any, record: OutputRecord, vector: np.ndarray) -> dict[str, Any]:
    """What a user would hand to the serializer for this record: every field of the layout, by name."""
    obj: dict[str, Any] = {}
    for c in writer.lay.columns:
        if c.kind == "vector":
            obj[c.name] = vector.tolist()
        elif c.constant:
            obj[c.name] = c.value
        elif c.name == writer.lay.id.name:
            obj[c.name] = as_text(record.ident)
        else:
            v = (record.payload or {}).get(c.name)
            obj[c.name] = v if c.kind == "int" or v is None else as_text(v)
    return obj


def serializer(fmt: str, writer: Any, client: SchemaRegistryClient, strategy: str = "topic") -> Any:
    conf = {"auto.register.schemas": True, "subject.name.strategy": STRATEGIES[strategy]}
    if fmt == "avro":
        return AvroSerializer(client, avro_schema_str(writer.lay), conf=conf)
    return ProtobufSerializer(writer.message_class, client, conf=conf)


def deserialize(fmt: str, writer: Any, client: SchemaRegistryClient, value: bytes) -> dict[str, Any]:
    if fmt == "avro":
        return AvroDeserializer(client)(value, CTX)
    msg = ProtobufDeserializer(writer.message_class, {"use.deprecated.format": False})(value, CTX)
    return {f.name: (list(getattr(msg, f.name)) if f.name == writer.lay.vector.name else
                     getattr(msg, f.name) if not f.has_presence or msg.HasField(f.name) else None)
            for f in msg.DESCRIPTOR.fields}


def to_message(writer: Any, obj: dict[str, Any]) -> Any:
    return writer.message_class(**{k: v for k, v in obj.items() if v is not None})


@pytest.mark.parametrize("fmt", ["avro", "protobuf"])
@pytest.mark.parametrize(("output", "chunked"), [(BARE, False), ({}, False), (FULL, False), (FULL, True)],
                         ids=["bare", "model", "full", "full-chunked"])
def test_bytes_equal_confluent_serializers_and_decode_with_its_deserializers(fmt, output, chunked):
    s = settings(fmt, output, chunked)
    writer, client = make_writer(s, "org/model", 24)
    vecs = np.random.default_rng(1).normal(size=(8, 24)).astype(np.float32)
    recs = records(8, full=output is FULL)
    values = writer.values(recs, vecs)
    ser = serializer(fmt, writer, client)
    for r, v, value in zip(recs, vecs, values, strict=True):
        obj = reference_object(s, writer, r, v)
        expected = ser(obj if fmt == "avro" else to_message(writer, obj), CTX)
        assert value == expected, (r, value.hex(), expected.hex())
        assert value[0] == 0 and int.from_bytes(value[1:5], "big") == writer_schema_id(value)
        back = deserialize(fmt, writer, client, value)
        vec = back.pop(writer.lay.vector.name)
        np.testing.assert_array_equal(np.asarray(vec, np.float32), v)  # float32 bits, exactly
        del obj[writer.lay.vector.name]
        if fmt == "protobuf":  # proto3 fields without presence read back as their zero value
            obj = {k: ("" if v is None and not writer_field_optional(writer, k) else v) for k, v in obj.items()}
        assert back == pytest.approx(obj)
    if fmt == "protobuf":
        assert all(value[5] == 0 for value in values)  # message indexes: [0] as the single byte 0


def writer_schema_id(value: bytes) -> int:
    return int.from_bytes(value[1:5], "big")


def writer_field_optional(writer: Any, name: str) -> bool:
    return next(c.optional for c in writer.lay.columns if c.name == name)


@fuzz(60)
@given(idents=st.lists(st.one_of(st.text(), st.integers(-2**70, 2**70)), min_size=1, max_size=4),
       texts=st.lists(st.text(), min_size=4, max_size=4),
       dim=st.integers(1, 40), fmt=st.sampled_from(["avro", "protobuf"]))
def test_fuzzed_ids_texts_and_dims_equal_the_serializers(idents, texts, dim, fmt):
    s = settings(fmt, {"payload_fields": ["title"], "payload_text": True})
    writer, client = make_writer(s, "m", dim)
    vecs = np.random.default_rng(dim).normal(size=(len(idents), dim)).astype(np.float32)
    recs = [OutputRecord(i, ident, payload={"text": texts[i], "title": texts[-1 - i]})
            for i, ident in enumerate(idents)]
    ser = serializer(fmt, writer, client)
    for r, v, value in zip(recs, vecs, writer.values(recs, vecs), strict=True):
        obj = reference_object(s, writer, r, v)
        assert value == ser(obj if fmt == "avro" else to_message(writer, obj), CTX)


@pytest.mark.parametrize("fmt", ["avro", "protobuf"])
@pytest.mark.parametrize("strategy", ["topic", "record", "topic_record"])
def test_subject_name_strategies_match_confluents(fmt, strategy):
    s = settings(fmt, {}, subject_name_strategy=strategy, record_name="acme.vectors.Doc")
    writer, client = make_writer(s, "m", 4)
    expected = {"topic": f"{TOPIC}-value", "record": "acme.vectors.Doc", "topic_record": f"{TOPIC}-acme.vectors.Doc"}
    assert subject_name(s.schema_registry, TOPIC) == expected[strategy]
    assert client.get_subjects() == [expected[strategy]]
    assert STRATEGIES[strategy](CTX, "acme.vectors.Doc") == expected[strategy]
    # confluent's serializer, configured with the same strategy, lands on the same subject and schema id
    vec = np.ones((1, 4), np.float32)
    [value] = writer.values([OutputRecord(0, "a")], vec)
    obj = reference_object(s, writer, OutputRecord(0, "a"), vec[0])
    assert serializer(fmt, writer, client, strategy)(obj if fmt == "avro" else to_message(writer, obj), CTX) == value
    assert client.get_subjects() == [expected[strategy]]


@pytest.mark.parametrize("fmt", ["avro", "protobuf"])
def test_auto_register_false_looks_up_and_a_missing_subject_is_one_clear_line(fmt):
    s = settings(fmt, FULL, auto_register=False)
    client = make_client(s.schema_registry)
    with pytest.raises(RegistryError) as e:
        make_writer(s, "m", 8, client=client)
    msg = str(e.value)
    assert "\n" not in msg and f"'{TOPIC}-value'" in msg and "EMBED_SCHEMA_REGISTRY__AUTO_REGISTER=false" in msg
    assert isinstance(e.value, SettingsError)  # the CLI and the supervisor exit 2 on it
    assert client.get_subjects() == []  # nothing was registered
    # registered by someone else first: looked up, same id
    writer, _ = make_writer(settings(fmt, FULL), "m", 8, client=client)
    looked_up, _ = make_writer(s, "m", 8, client=client)
    assert looked_up.prefix == writer.prefix


class IncompatibleRegistry:
    def register_schema(self, subject: str, schema: Any) -> int:
        raise SchemaRegistryError(409, 409, "Schema being registered is incompatible with an earlier schema for "
                                            "subject \"vectors-value\", details: [{errorType:'READER_FIELD_MISSING'}]")


def test_an_incompatible_schema_is_one_line_naming_the_subject():
    with pytest.raises(RegistryError) as e:
        make_writer(settings("avro", {}), "m", 8, client=IncompatibleRegistry())
    msg = str(e.value)
    assert "\n" not in msg and "incompatible" in msg and "'vectors-value'" in msg and "READER_FIELD_MISSING" in msg


def test_an_unreachable_registry_is_retried_with_back_off(caplog):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rs = settings("avro", {}, url=f"http://127.0.0.1:{port}", timeout_s=2).schema_registry
    slept: list[float] = []
    with caplog.at_level(logging.WARNING, logger="worker.registry"), pytest.raises(RegistryError) as e:
        register(make_client(rs), rs, "s-value", registry_schema(OutputFormat.avro, make_writer(
            settings("avro", {}), "m", 2)[0].lay), sleep=slept.append, max_attempts=4)
    assert slept == [1.0, 2.0, 4.0]
    assert "unreachable after 4 attempts" in str(e.value)
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 3


def test_one_error_from_a_flaky_registry_then_it_answers():
    class Flaky:
        calls = 0

        def register_schema(self, subject: str, schema: Any) -> int:
            self.calls += 1
            if self.calls < 3:
                raise SchemaRegistryError(503, 50301, "unavailable")
            return 42

    slept: list[float] = []
    rs = settings("avro", {}).schema_registry
    assert register(Flaky(), rs, "s", None, sleep=slept.append) == 42 and slept == [1.0, 2.0]


def test_registry_secrets_are_masked(monkeypatch, caplog):
    s2 = Settings(schema_registry={"url": "mock://x", "bearer_token": "tok-abc-123"})
    assert "tok-abc-123" not in repr(s2) and "tok-abc-123" not in s2.model_dump_json()
    monkeypatch.setenv("EMBED_OUTPUT__FORMAT", "avro")
    monkeypatch.setenv("EMBED_SCHEMA_REGISTRY__URL", "mock://secret-test")
    monkeypatch.setenv("EMBED_SCHEMA_REGISTRY__BASIC_AUTH_USER", "alice")
    monkeypatch.setenv("EMBED_SCHEMA_REGISTRY__BASIC_AUTH_PASSWORD", "hunter2-pw")
    s = load_settings()
    assert s.schema_registry.basic_auth_password is not None
    assert s.schema_registry.basic_auth_password.get_secret_value() == "hunter2-pw"
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.schema_registry)):
        assert "hunter2-pw" not in text
    # the client gets them; the log line of the registration does not (nor URL credentials)
    with caplog.at_level(logging.INFO, logger="worker.schema_output"):
        make_writer(s, "m", 4)
    assert caplog.records and all("hunter2-pw" not in str(vars(r)) for r in caplog.records)
    from worker.registry import client_config, safe_url

    assert client_config(s.schema_registry)["basic.auth.user.info"] == "alice:hunter2-pw"
    assert client_config(s2.schema_registry)["bearer.auth.token"] == "tok-abc-123"
    assert safe_url("https://bob:pw@reg:8081,https://c:d@reg2") == "https://***@reg:8081,https://***@reg2"


@pytest.mark.parametrize(("env", "needle"), [
    ({"EMBED_OUTPUT__FORMAT": "protobuf"}, "EMBED_SCHEMA_REGISTRY__URL"),
    ({"EMBED_OUTPUT__FORMAT": "avro", "EMBED_SCHEMA_REGISTRY__URL": "mock://x", "EMBED_OUTPUT__PAYLOAD_FIELD": "p"},
     "EMBED_OUTPUT__PAYLOAD_FIELD"),
    ({"EMBED_OUTPUT__FORMAT": "f32", "EMBED_OUTPUT__SCHEMA_ENVELOPE": "true"}, "EMBED_OUTPUT__SCHEMA_ENVELOPE"),
    ({"EMBED_SCHEMA_REGISTRY__BASIC_AUTH_USER": "u", "EMBED_SCHEMA_REGISTRY__BASIC_AUTH_PASSWORD": "p",
      "EMBED_SCHEMA_REGISTRY__BEARER_TOKEN": "t"}, "EMBED_SCHEMA_REGISTRY"),
    ({"EMBED_SCHEMA_REGISTRY__SUBJECT_NAME_STRATEGY": "guess"}, "EMBED_SCHEMA_REGISTRY__SUBJECT_NAME_STRATEGY"),
])
def test_bad_registry_settings_name_the_variable(monkeypatch, env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["avro", "protobuf"])
def test_field_names_must_suit_the_format(fmt):
    with pytest.raises(SettingsError, match="'my-title'"):
        make_writer(settings(fmt, {"payload_fields": ["my-title"]}), "m", 4)
    with pytest.raises(SettingsError, match="named twice"):
        make_writer(settings(fmt, {"payload_fields": ["text"], "payload_text": True}), "m", 4)


# ---- the JSON envelope for Kafka Connect's JsonConverter ----

CONNECT_TYPES = {"string": str, "int32": int, "int64": int, "double": float, "boolean": bool}


@pytest.mark.parametrize("vector", ["double", "float"])
@pytest.mark.parametrize(("output", "chunked"), [(BARE, False), ({}, False), (FULL, True)])
def test_envelope_schema_describes_its_payload(vector, output, chunked):
    s = Settings(output={"schema_envelope": True, "envelope_vector": vector, **output},
                 chunking={"mode": "words" if chunked else "off"})
    writer, client = make_writer(s, "org/model", 6)
    assert client is None
    vecs = np.random.default_rng(2).normal(size=(8, 6)).astype(np.float32)
    recs = records(8, full=output is FULL)
    for r, v, value in zip(recs, vecs, writer.values(recs, vecs), strict=True):
        doc = orjson.loads(value)
        assert set(doc) == {"schema", "payload"}
        schema, payload = doc["schema"], doc["payload"]
        assert schema["type"] == "struct" and schema["optional"] is False
        fields = {f["field"]: f for f in schema["fields"]}
        assert list(fields) == list(payload)  # every payload field has a schema field, and no other
        for name, f in fields.items():
            value_ = payload[name]
            if f["type"] == "array":
                assert f["name"] == {"double": "io.debezium.data.DoubleVector",
                                     "float": "io.debezium.data.FloatVector"}[vector]
                assert f["items"] == {"type": vector, "optional": False} and f["optional"] is False
                np.testing.assert_array_equal(np.asarray(value_, np.float32), v)
                continue
            if value_ is None:
                assert f["optional"] is True, name
                continue
            expected_type = CONNECT_TYPES[f["type"]]
            assert isinstance(value_, expected_type) and (expected_type is bool or not isinstance(value_, bool)), \
                (name, f, value_)
        assert payload["id"] == as_text(r.ident)
        if output is FULL:
            assert {"collection", "shard", "weight", "live", "title", "text", "document_id", *CHUNK_INTS} <= set(fields)
            assert fields["shard"]["type"] == "int64" and fields["chunk_index"]["type"] == "int32"
        if output == {}:
            assert payload["model"] == "org/model" and payload["dim"] == 6 and fields["dim"]["type"] == "int32"


def test_envelope_is_an_option_of_the_json_format():
    with pytest.raises(SettingsError):
        load_settings(output={"format": "avro", "schema_envelope": True}, schema_registry={"url": "mock://x"})
    assert load_settings(output={"schema_envelope": True}).output.format == OutputFormat.json


def test_run_exits_2_with_one_line_when_the_subject_is_missing(small_model):
    """`embedstream run` itself: the registry's refusal is a settings error (exit 2), before any broker call."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "EMBED_LOG__LEVEL": "WARNING", "EMBED_MODEL__PATH": str(small_model),
           "EMBED_METRICS__ENABLED": "false", "EMBED_OUTPUT__FORMAT": "protobuf",
           "EMBED_SCHEMA_REGISTRY__URL": "mock://cli", "EMBED_SCHEMA_REGISTRY__AUTO_REGISTER": "false",
           "EMBED_OUTPUT_TOPIC": "vectors-cli", "EMBED_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    r = subprocess.run([sys.executable, "-m", "worker", "run"], capture_output=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    last = r.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("embedstream run: schema registry: subject 'vectors-cli-value' has no version")
    assert b"Traceback" not in r.stderr


@pytest.mark.parametrize("vector", ["double", "float"])
def test_avro_vector_names_its_connect_type_for_the_jdbc_sink(vector):
    """Debezium's JDBC sink maps an array to pgvector only when its Connect schema is named DoubleVector (vector)
    or FloatVector (halfvec); an Avro converter names the array after its `connect.name` (tests/sink proves it)."""
    import json as _json

    from worker.schemas import VECTOR_NAMES

    s = settings("avro", {"envelope_vector": vector})
    writer, client = make_writer(s, "m", 8)
    registered = client.get_latest_version(f"{TOPIC}-value").schema.schema_str
    array = next(f["type"] for f in _json.loads(registered)["fields"] if f["name"] == writer.lay.vector.name)
    assert array == {"type": "array", "items": "float", "connect.name": VECTOR_NAMES[vector]}

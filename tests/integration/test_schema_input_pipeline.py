"""The worker's pipeline with `avro` input through the real broker: records written by confluent-kafka's
AvroSerializer are embedded (json output, ids and payload fields from the record), broken ones are dead letters with
the new error types, and every input is accounted for (consumed = produced + dead-lettered).

As tests/integration/test_schema_output_pipeline.py: the pipeline runs in this process (worker.app.build), so the
mock registry (in memory, one per client) is the worker's and the serializer's.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import orjson
import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client import CollectorRegistry

from kafkatools import Collector, produce, unique
from worker.app import build
from worker.encoder import Encoder
from worker.model import load_model
from worker.settings import load_settings

pytestmark = pytest.mark.integration

SCHEMA = {"type": "record", "name": "Text", "namespace": "acme", "fields": [
    {"name": "doc_id", "type": "string"}, {"name": "body", "type": ["null", "string"]},
    {"name": "title", "type": ["null", "string"], "default": None}]}


def test_avro_input_through_the_broker_every_input_accounted_for(bootstrap, topics, small_model):
    n = 300
    inp, out, dlq = topics(partitions=3)
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": unique("avro-in")}, input_topic=inp, output_topic=out,
        dlq_topic=dlq, model={"path": str(small_model)}, metrics={"enabled": False},
        input={"format": "avro", "id_field": "doc_id", "text_field": "body"},
        output={"payload_fields": ["title"]}, schema_registry={"url": "mock://integration-input"},
    )
    pipeline, _, health = build(settings, CollectorRegistry(), install_signals=False)
    assert pipeline.gate is not None
    client = pipeline.gate.reader.client
    ser = AvroSerializer(client, json.dumps(SCHEMA))
    ctx = SerializationContext(inp, MessageField.VALUE)
    words = ["alpha", "beta", "gamma", "delta", "kafka", "vector", "schema", "registry"]
    texts = {f"doc-{i}": " ".join(words[(i + k) % len(words)] for k in range(3 + i % 5)) for i in range(n)}
    good = [(f"k{i % 20}".encode(), ser({"doc_id": f"doc-{i}", "body": texts[f"doc-{i}"], "title": f"t{i}"}, ctx),
             None) for i in range(n)]
    sample = good[0][1]
    bad = {
        "invalid_framing": [b"\x01" + sample[1:], b"\x00\x00", b'{"text": "json, not avro"}'],
        "unknown_schema": [sample[:1] + (123456).to_bytes(4, "big") + sample[5:]],
        "invalid_record": [sample[:8]],
        "non_string_text": [ser({"doc_id": "null-body", "body": None, "title": None}, ctx)],
        "empty_text": [ser({"doc_id": "empty", "body": "  ", "title": None}, ctx)],
    }
    bad_values = [(b"bad", v, None) for vs in bad.values() for v in vs]
    produce(bootstrap, inp, good[: n // 2] + bad_values + good[n // 2:])
    thread = threading.Thread(target=pipeline.run, daemon=True)
    outputs, dead = Collector(bootstrap, out), Collector(bootstrap, dlq)
    thread.start()
    try:
        records = outputs.poll_until(n, timeout=120, settle=1)
        dead_letters = dead.poll_until(len(bad_values), timeout=60, settle=1)
    finally:
        pipeline.stop()
        thread.join(30)
        outputs.close()
        dead.close()
    assert not thread.is_alive() and pipeline.exit_code == 0
    assert len(records) == n and len(dead_letters) == len(bad_values)  # consumed = produced + dead-lettered
    assert health.registry_down is None and pipeline.gate.reader.fetches == 2  # the schema, and the unknown id
    types = sorted(dict(r.headers)["error-type"].decode() for r in dead_letters)
    assert types == sorted(t for t, vs in bad.items() for _ in vs)
    assert sorted(r.value for r in dead_letters) == sorted(v for _, v, _ in bad_values)  # the original values
    docs = [orjson.loads(r.value) for r in records]
    assert sorted(d["id"] for d in docs) == sorted(texts)
    assert all(d["title"] == f"t{d['id'].split('-')[1]}" for d in docs)
    expected = Encoder(load_model(small_model)).encode([texts[d["id"]] for d in docs])
    np.testing.assert_array_equal(np.array([d["embedding"] for d in docs], np.float32), expected)

"""The worker's pipeline with `avro` output through the real broker: every input is one Confluent-framed record
under the output topic's subject, decoded by confluent-kafka's AvroDeserializer to the worker's vector exactly.

The pipeline runs in this process (worker.app.build, as test_observability does), so that confluent-kafka's mock
registry (in memory, one per client) is the worker's and the test's. Against a real registry (Apicurio), the
worker's avro output (and input) runs end to end in tests/sink/test_worker_to_pgvector.py.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client import CollectorRegistry

from kafkatools import json_messages, produce, run_in_thread, unique
from worker.app import build
from worker.encoder import Encoder
from worker.model import load_model
from worker.settings import load_settings

pytestmark = pytest.mark.integration


def test_avro_output_through_the_broker_decodes_to_the_workers_vectors(bootstrap, topics, small_model):
    url = "mock://integration"
    n, bad = 600, 5
    inp, out, dlq = topics(partitions=3)
    msgs = json_messages(n, keys=30)
    produce(bootstrap, inp, msgs + [(b"bad", b"not json", None)] * bad)
    sent = {orjson.loads(v)["id"]: (k, orjson.loads(v)) for k, v, _ in msgs}
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": unique("avro")}, input_topic=inp, output_topic=out,
        dlq_topic=dlq, model={"path": str(small_model)}, metrics={"enabled": False},
        output={"format": "avro", "payload_fields": ["extra"], "payload_text": True},
        schema_registry={"url": url},
    )
    pipeline, _, _ = build(settings, CollectorRegistry(), install_signals=False)
    records, dead_letters = run_in_thread(pipeline, bootstrap, out, dlq, n, bad)
    assert len(records) == n and len(dead_letters) == bad  # consumed = produced + dead-lettered

    client = pipeline.assembler.registry_client
    registered = client.get_latest_version(f"{out}-value")  # TopicNameStrategy
    assert registered.schema.schema_type == "AVRO"
    ctx = SerializationContext(out, MessageField.VALUE)
    deserialize = AvroDeserializer(client)
    docs = []
    for r in records:
        assert r.value is not None and r.value[0] == 0
        assert int.from_bytes(r.value[1:5], "big") == registered.schema_id
        doc = deserialize(r.value, ctx)
        key, source = sent[doc["id"]]
        assert r.key == key and doc["text"] == source["text"] and doc["extra"] == str(source["extra"])
        assert doc["model"] == pipeline.assembler.outputs.model_name and doc["dim"] == 32
        docs.append(doc)
    assert {d["id"] for d in docs} == set(sent)
    expected = Encoder(load_model(small_model)).encode([d["text"] for d in docs])
    np.testing.assert_array_equal(np.array([d["embedding"] for d in docs], np.float32), expected)

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

from kafkatools import Collector, produce, run_in_thread, unique
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
    records, dead_letters = run_in_thread(pipeline, bootstrap, out, dlq, n, len(bad_values))
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


class FlakyRegistry:
    """The worker's registry client, unreachable for the first `failures` schema fetches (connection refused)."""

    def __init__(self, inner, failures: int) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    def get_schema(self, schema_id, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionRefusedError("connection refused")
        return self.inner.get_schema(schema_id, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_registry_unreachable_holds_the_input_then_embeds_every_record_once(bootstrap, topics, small_model,
                                                                           monkeypatch):
    import time

    import worker.registry as registry_module
    from kafkatools import committed_total, wait_for

    monkeypatch.setattr(registry_module, "FIRST_RETRY_S", 0.2)  # back-off 0.2, 0.4, 0.8 s instead of 1, 2, 4 s
    n, group = 200, unique("avro-held")
    inp, out, dlq = topics(partitions=2)
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": group}, input_topic=inp, output_topic=out, dlq_topic=dlq,
        model={"path": str(small_model)}, metrics={"enabled": False}, input={"format": "avro", "text_field": "body",
                                                                                "id_field": "doc_id"},
        schema_registry={"url": "mock://integration-held"},
    )
    pipeline, _, health = build(settings, CollectorRegistry(), install_signals=False)
    assert pipeline.gate is not None
    flaky = FlakyRegistry(pipeline.gate.reader.client, failures=3)
    ser = AvroSerializer(flaky.inner, json.dumps(SCHEMA))
    ctx = SerializationContext(inp, MessageField.VALUE)
    produce(bootstrap, inp, [(f"k{i}".encode(), ser({"doc_id": f"d{i}", "body": f"alpha beta {i}", "title": None},
                                                     ctx), None) for i in range(n)])
    pipeline.gate.reader.client = flaky
    seen: list[tuple[bool, str, bool]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            seen.append((*health.ready(), pipeline.paused))

    thread = threading.Thread(target=pipeline.run, daemon=True)
    watcher = threading.Thread(target=watch, daemon=True)
    outputs, dead = Collector(bootstrap, out), Collector(bootstrap, dlq)
    thread.start()
    watcher.start()
    try:
        records = outputs.poll_until(n, timeout=120, settle=2)
        wait_for(lambda: committed_total(bootstrap, group, inp, 2) == n, 60, "offsets committed")
        time.sleep(0.5)
        dead_letters = dead.poll_until(1, timeout=2, settle=0)
    finally:
        stop.set()
        pipeline.stop()
        thread.join(30)
        outputs.close()
        dead.close()
    assert not thread.is_alive() and pipeline.exit_code == 0
    assert dead_letters == [] and len(records) == n  # nothing skipped, nothing dead-lettered
    assert sorted(orjson.loads(r.value)["id"] for r in records) == sorted(f"d{i}" for i in range(n))
    assert len({(r.partition, r.offset) for r in records}) == n  # each once
    assert flaky.calls == 4 and pipeline.gate.failures == 3
    held = [s for s in seen if not s[0] and "schema registry unreachable" in s[1]]
    assert held and all(paused for _, _, paused in held), "not ready and paused while the registry was down"
    assert seen[-1][0] and not pipeline.paused  # ready and consuming again

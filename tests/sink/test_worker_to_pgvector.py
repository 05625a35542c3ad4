"""The whole path with real parts (issue 20, part 4): texts produced to Kafka (Avro through Apicurio Registry, or
JSON), the worker (`python -m worker run`, a child process) embedding them with the default model's tokenizer
(the gemma-like fixture) into Avro (registered in Apicurio) or JSON with a Kafka Connect schema envelope, Kafka
Connect standalone with the Debezium JDBC sink writing them into PostgreSQL + pgvector. The worker is killed
with SIGKILL mid-stream and started again (at least once: it re-reads what it had not committed).

Checked in SQL: every input is exactly one row (id is the primary key: the replays upsert), each row's vector
equals the worker's (the same Encoder, in this process) to float32 precision, and a nearest-neighbour query
(`ORDER BY embedding <=> $1`) with a sample text's vector returns that text first."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from kafkatools import Collector, WorkerProcess, create_topics, produce, wait_for
from modelfactory import sample_texts

pytestmark = [pytest.mark.sink, pytest.mark.timeout(900)]

psycopg = pytest.importorskip("psycopg")

N = 600
INPUT_AVRO = json.dumps({"type": "record", "name": "Text", "namespace": "app",
                         "fields": [{"name": "id", "type": "string"}, {"name": "text", "type": "string"}]})


@pytest.fixture(scope="module")
def model(gemma_model) -> Path:
    return gemma_model("float16")


@pytest.fixture(scope="module")
def encoder(model):
    from worker.encoder import Encoder
    from worker.model import load_model

    return Encoder(load_model(model))


def texts() -> dict[str, str]:
    """N distinct texts by id (a nearest-neighbour query must have one right answer)."""
    out: dict[str, str] = {}
    for i, t in enumerate(dict.fromkeys(sample_texts(N * 2, seed=20, min_words=4, max_words=20))):
        if len(out) == N:
            break
        out[f"doc-{i}"] = t
    assert len(out) == N
    return out


def input_messages(stack, fmt: str, topic: str, docs: dict[str, str]) -> list[tuple[bytes, bytes, list]]:
    if fmt == "json":
        return [(k.encode(), json.dumps({"id": k, "text": t}).encode(), []) for k, t in docs.items()]
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    # TOPIC: confluent-kafka >= 2.16 otherwise asks Apicurio's /associations first (see test_sink_stack.py)
    registry = SchemaRegistryClient({"url": stack.ccompat_url, "timeout": 30})
    ser = AvroSerializer(registry, INPUT_AVRO, conf={"subject.name.strategy.type": "TOPIC"})
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [(k.encode(), ser({"id": k, "text": t}, ctx), []) for k, t in docs.items()]


def table_rows(stack, table: str) -> dict[str, tuple[str, np.ndarray]]:
    with psycopg.connect(stack.pg_dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f'public."{table}"',)).fetchone()[0] is None:
            return {}
        rows = conn.execute(f'SELECT id, text, embedding::text FROM "{table}"').fetchall()
    return {i: (t, np.asarray(json.loads(v), dtype=np.float32)) for i, t, v in rows}


# (input format, output settings, connector config file)
CASES = {
    "avro-in-avro-out": ("avro", {"EMBED_OUTPUT__FORMAT": "avro"}, "pgvector-sink-avro.json"),
    "json-in-envelope-out": ("json", {"EMBED_OUTPUT__FORMAT": "json", "EMBED_OUTPUT__SCHEMA_ENVELOPE": "true"},
                             "pgvector-sink.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_texts_through_the_worker_into_pgvector_one_row_each_across_a_kill(sink_stack, model, encoder, case,
                                                                           tmp_path):
    in_fmt, out_env, connector_file = CASES[case]
    tag = uuid.uuid4().hex[:8]
    topic_in, table, dlq = f"texts_{tag}", f"vectors_{case.replace('-', '_')}_{tag}", f"dlq_{tag}"
    bootstrap = sink_stack.bootstrap
    create_topics(bootstrap, [topic_in, table], partitions=3)
    create_topics(bootstrap, [dlq])
    docs = texts()
    messages = input_messages(sink_stack, in_fmt, topic_in, docs)
    produce(bootstrap, topic_in, messages[: N // 2])  # the second half after the kill

    connector = f"sink-{tag}"
    sink_stack.add_connector(connector, sink_stack.connector_config(connector_file, connector, table))
    env = {"EMBED_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "EMBED_KAFKA__GROUP_ID": f"sink-e2e-{tag}",
           "EMBED_INPUT_TOPIC": topic_in, "EMBED_OUTPUT_TOPIC": table, "EMBED_DLQ_TOPIC": dlq,
           "EMBED_MODEL__PATH": str(model), "EMBED_INPUT__FORMAT": in_fmt, "EMBED_OUTPUT__PAYLOAD_TEXT": "true",
           "EMBED_SCHEMA_REGISTRY__URL": sink_stack.ccompat_url, "EMBED_SCHEMA_REGISTRY__TIMEOUT_S": "30",
           "EMBED_BATCH__MAX_MESSAGES": "32", "EMBED_KAFKA__COMMIT_INTERVAL_MS": "5000", **out_env}
    watcher = Collector(bootstrap, table)
    worker = WorkerProcess(env, tmp_path / "worker-1.log")
    try:
        # SIGKILL once outputs flow (commits every 5 s: acknowledged outputs are uncommitted, so they are replayed)
        wait_for(lambda: len(watcher.poll_until(1, timeout=1)) >= N // 4 or worker.proc.poll() is not None, 180,
                 "a quarter of the outputs")
        assert worker.proc.poll() is None, worker.log_tail()
        worker.signal(signal.SIGKILL)
        worker.kill()
        produce(bootstrap, topic_in, messages[N // 2:])
        worker = WorkerProcess(env, tmp_path / "worker-2.log")
        worker.wait_ready(120)
        deadline = time.monotonic() + 300
        rows: dict[str, tuple[str, np.ndarray]] = {}
        while time.monotonic() < deadline:
            failure = sink_stack.task_failure(connector)
            assert failure is None, f"connector task failed:\n{failure}"
            rows = table_rows(sink_stack, table)
            if len(rows) >= N:
                break
            assert worker.proc.poll() is None, worker.log_tail()
            time.sleep(1)
        assert worker.stop() == 0, worker.log_tail()
    finally:
        worker.kill()
        sink_stack.delete_connector(connector)
    outputs = len(watcher.poll_until(N, timeout=10, settle=2))
    watcher.close()
    assert outputs >= N, f"only {outputs} outputs for {N} inputs"

    # every input exactly one row, keyed by its id (replays after the kill upserted)
    assert set(rows) == set(docs), (len(rows), sorted(set(docs) - set(rows))[:5])
    with psycopg.connect(sink_stack.pg_dsn, autocommit=True) as conn:
        count, distinct = conn.execute(f'SELECT count(*), count(DISTINCT id) FROM "{table}"').fetchone()
        assert (count, distinct) == (N, N)
        pk = conn.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                          "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                          (f'public."{table}"',)).fetchall()
        assert [r[0] for r in pk] == ["id"]

        # the vectors are the worker's: the same encoder here, float32 for float32
        ids = list(docs)
        expected = encoder.encode([docs[i] for i in ids])
        got = np.stack([rows[i][1] for i in ids])
        assert [rows[i][0] for i in ids] == [docs[i] for i in ids]
        np.testing.assert_array_equal(got, expected)

        # nearest neighbour: a sample text's vector finds that text first
        for i in ids[:: N // 10]:
            q = "[" + ",".join(repr(float(x)) for x in encoder.encode([docs[i]])[0]) + "]"
            first_id, first_text = conn.execute(
                f'SELECT id, text FROM "{table}" ORDER BY embedding <=> %s::vector LIMIT 1', (q,)).fetchone()
            assert (first_id, first_text) == (i, docs[i])
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    print(f"\n{case}: {N} inputs, {outputs} outputs (replays after SIGKILL: {outputs - N}), {len(rows)} rows")

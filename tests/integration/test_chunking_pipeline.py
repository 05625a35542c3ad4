"""Long documents end to end: documents -> chunks -> outputs reconcile exactly; sink-ready JSON."""

from __future__ import annotations

import collections

import numpy as np
import orjson
import pytest

from kafkatools import Collector, WorkerProcess, produce, wait_for
from modelfactory import sample_texts
from worker.chunking import Chunker, document_vector
from worker.encoder import Encoder
from worker.model import load_model
from worker.settings import ChunkingSettings

pytestmark = pytest.mark.integration


def documents() -> list[tuple[str, str]]:
    long_en = [" ".join(sample_texts(120, seed=100 + i, min_words=5, max_words=12)) for i in range(30)]
    long_ja = ["東京は日本の首都です。猫が好き!ありがとう" * (40 + i) for i in range(10)]
    short = sample_texts(60, seed=200)
    docs = long_en + long_ja + short
    return [(f"doc{i}", t) for i, t in enumerate(docs)]


def test_documents_chunks_and_outputs_reconcile_exactly(bootstrap, topics, worker_env, small_model, tmp_path):
    inp, out, dlq = topics(partitions=2)
    docs = documents()
    msgs = [(ident.encode(), orjson.dumps({"id": ident, "text": text, "title": f"T{ident}", "lang": "x"}), None)
            for ident, text in docs]
    bad = [(b"bad", b"{not json", None)]
    produce(bootstrap, inp, msgs + bad)

    settings = ChunkingSettings(mode="words", size=100, overlap=10, document_vector=True)
    model = load_model(small_model)
    chunker = Chunker(settings, model.tokenizer)
    spans = {ident: chunker.split(text) for ident, text in docs}
    chunked = {ident for ident, sp in spans.items() if len(sp) > 1}
    assert len(chunked) >= 35  # the long English and Japanese documents
    expected_outputs = sum(len(sp) + 1 for sp in spans.values())  # chunks + one document vector each

    env = worker_env(inp, out, dlq, EMBED_CHUNKING__MODE="words", EMBED_CHUNKING__SIZE="100",
                     EMBED_CHUNKING__OVERLAP="10", EMBED_CHUNKING__DOCUMENT_VECTOR="true",
                     EMBED_OUTPUT__VECTOR_FIELD="vector", EMBED_OUTPUT__INCLUDE_MODEL="false",
                     EMBED_OUTPUT__PAYLOAD_FIELD="payload", EMBED_OUTPUT__PAYLOAD_FIELDS="title,lang",
                     EMBED_OUTPUT__PAYLOAD_TEXT="true", EMBED_OUTPUT__EXTRA='{"collection_name": "docs"}')
    worker = WorkerProcess(env, tmp_path / "w.log")
    collector, dead = Collector(bootstrap, out), Collector(bootstrap, dlq)
    try:
        records = collector.poll_until(expected_outputs, timeout=120, settle=2)
        dlq_records = dead.poll_until(1, timeout=30)
        wait_for(lambda: worker.metric("embedstream_messages_produced_total") == len(docs), 30, "metrics")
        metrics = {name: worker.metric(name) for name in (
            "embedstream_messages_consumed_total", "embedstream_messages_produced_total",
            "embedstream_chunks_embedded_total")}
    finally:
        assert worker.stop() == 0, worker.log_tail()
        collector.close()
        dead.close()

    assert len(records) == expected_outputs and len(dlq_records) == 1
    # Documents and chunks are counted separately; documents reconcile with dead letters.
    assert metrics["embedstream_messages_consumed_total"] == len(docs) + 1
    assert metrics["embedstream_messages_produced_total"] == len(docs)
    assert metrics["embedstream_chunks_embedded_total"] == sum(len(sp) for sp in spans.values())

    enc = Encoder(model)
    texts = dict(docs)
    by_doc: dict[str, list] = collections.defaultdict(list)
    doc_vectors = {}
    for r in records:
        v = orjson.loads(r.value)
        assert set(v) == {"collection_name", "id", "vector", "payload"}  # Qdrant sink form
        assert v["collection_name"] == "docs"
        assert r.headers["source-topic"] == inp.encode()
        if r.headers["chunk-kind"] == b"document":
            doc_vectors[v["id"]] = np.asarray(v["vector"], np.float32)
            assert v["payload"] == {"title": f"T{v['id']}", "lang": "x"}
            continue
        p = v["payload"]
        ident = p["document_id"]
        assert r.key == ident.encode()  # same key as the input document
        assert v["id"] == f"{ident}#{p['chunk_index']}"
        start, end = int(r.headers["chunk-start"]), int(r.headers["chunk-end"])
        assert (start, end) == (p["chunk_start"], p["chunk_end"])
        assert p["text"] == texts[ident][start:end] and p["title"] == f"T{ident}"
        assert int(r.headers["chunk-count"]) == len(spans[ident])
        by_doc[ident].append((int(r.headers["chunk-index"]), start, end, np.asarray(v["vector"], np.float32)))

    assert set(by_doc) == set(texts) and set(doc_vectors) == set(texts)
    for ident, chunks in by_doc.items():
        chunks.sort(key=lambda c: c[0])
        assert [c[0] for c in chunks] == list(range(len(spans[ident])))
        assert [(c[1], c[2]) for c in chunks] == [(s.start, s.end) for s in spans[ident]]
        chunk_texts = [texts[ident][s:e] for _, s, e, _ in chunks]
        got = np.vstack([c[3] for c in chunks])
        out = enc.encode_batch(chunk_texts)
        assert np.abs(got - out.vectors).max() <= 1e-6
        expected_doc = document_vector(out.vectors, out.token_counts, enc.normalize)
        assert np.abs(doc_vectors[ident] - expected_doc).max() <= 1e-5

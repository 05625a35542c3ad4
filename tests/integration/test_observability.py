"""Metrics and probes against the real broker: counters equal real counts, probes tell the truth."""

from __future__ import annotations

import collections
import threading
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry

from kafkatools import Collector, WorkerProcess, free_port, json_messages, produce, wait_for
from worker.app import build
from worker.encoder import Encoder
from worker.model import load_model
from worker.settings import load_settings

pytestmark = pytest.mark.integration


def scrape(worker: WorkerProcess) -> dict[str, float]:
    status, body = worker.get("/metrics")
    assert status == 200
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_equal_the_real_counts_and_lag_drains_to_zero(bootstrap, topics, worker_env, small_model, tmp_path):
    parts = 3
    inp, out, dlq = topics(partitions=parts)
    good = json_messages(3000, keys=30, seed=21)
    bad = [(f"bad{i}".encode(), b"{oops" if i % 2 else None, None) for i in range(30)]
    produce(bootstrap, inp, good + bad)
    worker = WorkerProcess(worker_env(inp, out, dlq), tmp_path / "w.log")
    collector = Collector(bootstrap, out)
    try:
        records = collector.poll_until(len(good), timeout=120, settle=1)
        wait_for(lambda: scrape(worker).get("embedstream_consumer_lag_sum_messages", -1) == 0
                 and scrape(worker).get("embedstream_messages_consumed_total") == 3030, 60, "lag to drain")
        m = scrape(worker)
        ready, healthy = worker.get("/readyz"), worker.get("/healthz")
    finally:
        assert worker.stop() == 0, worker.log_tail()
        collector.close()
    assert len(records) == 3000
    assert m["embedstream_messages_consumed_total"] == 3030
    assert m["embedstream_messages_embedded_total"] == 3000
    assert m["embedstream_messages_produced_total"] == 3000
    assert m['embedstream_messages_dead_lettered_total{reason="invalid_json"}'] == 15
    assert m['embedstream_messages_dead_lettered_total{reason="null_value"}'] == 15
    dead = sum(v for k, v in m.items() if k.startswith("embedstream_messages_dead_lettered_total"))
    assert m["embedstream_messages_consumed_total"] == m["embedstream_messages_produced_total"] + dead

    # Histograms: one observation per batch (sizes summing to every message), per acknowledged message.
    batches = m["embedstream_batch_size_messages_count"]
    assert batches >= 1 and m["embedstream_batch_size_messages_sum"] == 3030
    assert m['embedstream_stage_duration_seconds_count{stage="decode"}'] == batches
    assert m['embedstream_stage_duration_seconds_count{stage="encode"}'] == batches
    assert m['embedstream_stage_duration_seconds_count{stage="produce"}'] == batches
    assert m['embedstream_stage_duration_seconds_count{stage="commit"}'] >= 1
    assert m["embedstream_end_to_end_latency_seconds_count"] == 3030  # outputs and dead letters
    assert m["embedstream_end_to_end_latency_seconds_sum"] > 0

    # Tokens: exactly what the encoder pools for these texts.
    texts = [orjson.loads(v)["text"] for _, v, _ in good]
    tokens = int(Encoder(load_model(small_model)).encode_batch(texts).token_counts.sum())
    assert m["embedstream_tokens_encoded_total"] == tokens
    assert m["embedstream_consumed_bytes_total"] == sum(len(v) for _, v, _ in good + bad if v)
    assert m["embedstream_produced_bytes_total"] == sum(len(r.value) for r in records)

    # Lag per partition, all drained, and only for the partitions this process owns.
    lag_series = {k: v for k, v in m.items() if k.startswith("embedstream_consumer_lag_messages{")}
    assert len(lag_series) == parts and set(lag_series.values()) == {0.0}
    assert m["embedstream_assigned_partitions"] == parts
    assert m['embedstream_rebalances_total{event="assign"}'] >= 1
    assert m["embedstream_broker_up"] == 1
    assert any(k.startswith("embedstream_model_info{") and 'dim="32"' in k for k in m)
    assert any(k.startswith("embedstream_build_info{") for k in m)
    assert m["embedstream_model_table_bytes"] == 600 * 32 * 4
    assert m["embedstream_process_pss_bytes"] > 0 and "process_cpu_seconds_total" in m
    assert ready[0] == 200 and healthy[0] == 200
    # The fast path's cache is visible when it is on (it verifies on the test model).
    info = next(k for k in m if k.startswith("embedstream_model_info{"))
    assert 'fast_path="on"' in info, info
    assert m["embedstream_fastpath_cache_hits_total"] + m["embedstream_fastpath_cache_misses_total"] > 0
    assert m["embedstream_fastpath_cache_entries"] > 0 and m["embedstream_fastpath_cache_bytes"] > 0


def test_readyz_follows_the_broker_and_nothing_is_lost_across_an_outage(private_broker, small_model, tmp_path):
    from kafkatools import create_topics, unique

    bootstrap = private_broker.bootstrap
    inp, out, dlq = unique("in"), unique("out"), unique("dlq")
    create_topics(bootstrap, [inp, out, dlq], 2)
    produce(bootstrap, inp, json_messages(500, seed=1, prefix="before"))
    env = {
        "EMBED_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "EMBED_KAFKA__GROUP_ID": unique("g"),
        "EMBED_INPUT_TOPIC": inp, "EMBED_OUTPUT_TOPIC": out, "EMBED_DLQ_TOPIC": dlq,
        "EMBED_MODEL__PATH": str(small_model), "EMBED_METRICS__STATISTICS_INTERVAL_MS": "500",
    }
    worker = WorkerProcess(env, tmp_path / "w.log")
    try:
        worker.wait_ready()
        wait_for(lambda: worker.metric("embedstream_messages_produced_total") == 500, 60, "first 500")
        private_broker.stop()
        wait_for(lambda: worker.get("/readyz")[0] == 503, 60, "/readyz to fail with the broker down")
        assert "broker" in worker.get("/readyz")[1]
        assert worker.get("/healthz")[0] == 200  # a restart would not help: liveness holds
        assert worker.metric("embedstream_broker_up") == 0
        time.sleep(3)
        private_broker.start()
        wait_for(lambda: worker.get("/readyz")[0] == 200, 90, "/readyz to recover")
        produce(bootstrap, inp, json_messages(500, seed=2, prefix="after"))
        collector = Collector(bootstrap, out)
        records = collector.poll_until(1000, timeout=120, settle=1)
        collector.close()
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    ids = collections.Counter(orjson.loads(r.value)["id"] for r in records)
    expected = {f"{p}k{i % 50}:{i // 50}" for p in ("before", "after") for i in range(500)}
    assert set(ids) == expected  # nothing lost across the outage (duplicates would be counted, not lost)


def test_healthz_fails_when_the_loop_stalls_with_work_and_not_when_idle(bootstrap, topics, small_model):
    inp, out, dlq = topics()
    port = free_port()
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"stall-{port}"},
        input_topic=inp, output_topic=out, dlq_topic=dlq, model={"path": str(small_model)},
        metrics={"port": port, "host": "127.0.0.1", "stall_timeout_s": 2.0, "statistics_interval_ms": 500},
    )
    pipeline, _, health = build(settings, CollectorRegistry(), install_signals=False)
    release = threading.Event()
    real_encode = pipeline.encoder.encode_batch

    def blocking_encode(texts):  # type: ignore[no-untyped-def]
        if any(t == "STALL" for t in texts):
            release.wait(60)
        return real_encode(texts)

    pipeline.encoder.encode_batch = blocking_encode  # type: ignore[method-assign]
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()

    def healthz() -> int:
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        wait_for(lambda: health.ready()[0], 60, "ready")
        time.sleep(3)  # idle for longer than the stall timeout: still live
        assert healthz() == 200
        produce(bootstrap, inp, [(b"k", orjson.dumps({"id": "s", "text": "STALL"}), None)])
        wait_for(lambda: healthz() == 503, 30, "/healthz to fail while the loop is stuck")
        release.set()
        wait_for(lambda: healthz() == 200, 30, "/healthz to recover")
    finally:
        release.set()
        pipeline.stop()
        thread.join(30)
    assert not thread.is_alive()
